from mlx_slm.commands.cli import main

main()
