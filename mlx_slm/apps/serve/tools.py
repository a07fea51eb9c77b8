"""OpenAI tool calling on a model that was never tuned for it: the tool definitions, how
they are written into the Instruct prompt, the grammar a call is generated under, and how
the generated text becomes `tool_calls`.

A call is written `<tool_call>` followed by one JSON object `{"name": ..., "arguments":
{...}}`, and nothing after it. With tool_choice "required" or a named function the grammar
forces that form; with "auto" it allows either a text answer that does not begin with the
marker, or the marker and a call. Either way a call that is made matches its function's
schema, since the grammar (constrain.py, llguidance) masks every token.
"""

import json
import re
import uuid
from dataclasses import dataclass

from mlx_slm import constrain
from mlx_slm.errors import SlmError

MARKER = "<tool_call>"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
CHOICES = ("none", "auto", "required")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


class ToolError(ValueError):
    """A bad definition or message: `param` names the field (the HTTP side makes it a 400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict


@dataclass(frozen=True)
class Tools:
    """A request's checked tools and tool_choice ("auto", "required", or a tool's name)."""

    tools: tuple[Tool, ...]
    choice: str

    @property
    def forced(self) -> bool:
        """Whether the answer must be a call (no text alternative)."""
        return self.choice != "auto"

    def allowed(self) -> tuple[Tool, ...]:
        if self.choice in ("auto", "required"):
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)

    def system_text(self) -> str:
        """The tools as the system turn states them (after the caller's system text)."""
        lines = ["You can call these functions. Each is given as JSON:"]
        lines += [json.dumps({"name": t.name, "description": t.description,
                              "parameters": t.parameters}) for t in self.tools]
        how = (f'To call one, answer with {MARKER} followed by a JSON object '
               '{"name": ..., "arguments": {...}} and nothing else.')
        if self.choice == "auto":
            how += " Otherwise answer in text."
        elif self.choice == "required":
            how += " You must call one of them."
        else:
            how += f" You must call {self.choice}."
        return "\n".join(lines + [how])

    def grammar(self) -> constrain.ConstraintSpec:
        """The constraint on the answer: a call to an allowed tool (or, with "auto", text
        that does not start with the marker)."""
        calls = [{"type": "object",
                  "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                  "required": ["name", "arguments"], "additionalProperties": False}
                 for t in self.allowed()]
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        # The separators of response_format's JSON (constrain.JSON_OPTIONS), fixed as there.
        schema = {**schema, "x-guidance": constrain.JSON_OPTIONS}
        marker = json.dumps(MARKER)
        lark = (f"start: {'TEXT | ' if self.choice == 'auto' else ''}call\n"
                f"call: {marker} arguments\n"
                f"arguments: %json {json.dumps(schema)}\n"
                # Any text, as long as it does not open a call: once the marker is written
                # only the call's grammar can go on.
                f"TEXT: /(?s:.+)/ & ~/{re.escape(MARKER)}(?s:.*)/\n")
        return constrain.lark(lark)


def parse_tools(tools, choice) -> Tools | None:
    """The body's `tools` and `tool_choice`, checked; None when no tool may be called."""
    if tools is None:
        if choice not in (None, "none"):
            raise ToolError("tool_choice needs tools.", "tool_choice")
        return None
    if not isinstance(tools, list) or not tools:
        raise ToolError("'tools' must be a non-empty list of functions.", "tools")
    checked = []
    for i, tool in enumerate(tools):
        checked.append(_tool(tool, f"tools[{i}]"))
        if checked[-1].name in (t.name for t in checked[:-1]):
            raise ToolError(f"tools[{i}]: the function name {checked[-1].name!r} is used twice.",
                            f"tools[{i}].function.name")
    choice = _choice(choice if choice is not None else "auto", [t.name for t in checked])
    return None if choice == "none" else Tools(tuple(checked), choice)


def _tool(tool, where: str) -> Tool:
    if not (isinstance(tool, dict) and tool.get("type") == "function"
            and isinstance(tool.get("function"), dict)):
        raise ToolError(f'{where} must be {{"type": "function", "function": {{...}}}}.', where)
    function = tool["function"]
    name = function.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ToolError(f"{where}.function.name must be 1-64 letters, digits, _ or -, got "
                        f"{name!r:.70}.", f"{where}.function.name")
    description = function.get("description", "")
    if not isinstance(description, str):
        raise ToolError(f"{where}.function.description must be a string.",
                        f"{where}.function.description")
    parameters = function.get("parameters", EMPTY_PARAMETERS)
    if not isinstance(parameters, dict):
        raise ToolError(f"{where}.function.parameters must be a JSON schema object.",
                        f"{where}.function.parameters")
    try:
        constrain.json_schema(parameters)  # compiled once here so the error names this tool
    except SlmError as err:
        raise ToolError(f"{where}.function.parameters: {err}", f"{where}.function.parameters") \
            from None
    return Tool(name, description, parameters)


def _choice(choice, names: list[str]) -> str:
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise ToolError(f"tool_choice must be none, auto, required or a function, got "
                            f"{choice!r:.40}.", "tool_choice")
        return choice
    named = isinstance(choice, dict) and choice.get("type") == "function"
    function = choice.get("function") if named else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise ToolError('tool_choice must be none, auto, required or {"type": "function", '
                        '"function": {"name": ...}}.', "tool_choice")
    if name not in names:
        raise ToolError(f"tool_choice names {name!r:.70}, which is not in tools.", "tool_choice")
    return name


def call_text(name: str, arguments: dict) -> str:
    """A call as the model writes it (the grammar's separators), for the prompt's history."""
    return MARKER + json.dumps({"name": name, "arguments": arguments})


def history_calls(calls, where: str) -> str:
    """An assistant message's `tool_calls`, written back as the model would have made them."""
    if not isinstance(calls, list):
        raise ToolError(f"{where} must be a list.", where)
    texts = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise ToolError(f"{at} must have function.name and function.arguments (a JSON "
                            "string).", at)
        try:
            texts.append(call_text(name, json.loads(arguments)))
        except json.JSONDecodeError:
            raise ToolError(f"{at}.function.arguments is not valid JSON.",
                            f"{at}.function.arguments") from None
    return "\n".join(texts)


def result_text(content: str, tool_call_id: str, name: str | None) -> str:
    """A tool's result as the user turn that carries it (the format has no tool role)."""
    head = {"tool_call_id": tool_call_id, **({"name": name} if name else {})}
    return f"<tool_result>{json.dumps(head)}\n{content}"


def parse_call(text: str) -> dict | None:
    """The OpenAI `tool_calls` entry for a generated call, or None if `text` is not one
    (a text answer, or a call cut short by max_tokens)."""
    if not text.startswith(MARKER):
        return None
    try:
        call = json.loads(text[len(MARKER):])
    except json.JSONDecodeError:
        return None
    if not (isinstance(call, dict) and isinstance(call.get("name"), str)
            and "arguments" in call):
        return None
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}


class ToolText:
    """Wraps an output TextStream: text that may still open a call is held back; a call is
    held whole and given as `call` at the end, never as content."""

    def __init__(self, text):
        self.inner = text
        self.held = ""
        self.mode = None  # None: undecided, "text" or "call"
        self._call = None

    @property
    def stopped(self) -> bool:
        return self.inner.stopped

    def token_text(self, token: int) -> str:
        return self.inner.token_text(token)

    def add(self, token: int) -> str:
        return self._release(self.inner.add(token), final=False)

    def finish(self) -> str:
        return self._release(self.inner.finish(), final=True)

    def _release(self, piece: str, final: bool) -> str:
        if self.mode == "text":
            return piece
        self.held += piece
        if self.mode is None:
            if self.held.startswith(MARKER):
                # The grammar ends a call; a stop string inside its JSON must not cut it.
                self.mode, self.inner.stop = "call", ()
            elif MARKER.startswith(self.held) and not final:
                return ""
            else:
                self.mode, piece, self.held = "text", self.held, ""
                return piece
        return ""

    def call(self) -> dict | None:
        """The call made, once the text is complete (the same id on every call)."""
        if self._call is None and self.mode == "call":
            self._call = parse_call(self.held)
        return self._call

    def leftover(self) -> str:
        """Held text that did not become a call (cut by max_tokens or a stop string)."""
        return self.held if self.call() is None else ""
