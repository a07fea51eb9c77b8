from mlx_slm.cli import main

main()
