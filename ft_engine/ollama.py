"""An Ollama Modelfile for an exported GGUF: its TEMPLATE (Go text/template) translated from the
model's own chat template, its stop tokens, and the run's system prompt.

The translation does not parse Jinja. It renders the chat template (with transformers, as the
studio trains and chats) on a few conversations whose contents are marker strings, and reads
the template's fixed text from between the markers: what comes before a system prompt, between
it and the first user turn, after a user turn (the assistant's opening), after an assistant
turn (its end and the next user's opening), and what the template writes by itself when a
conversation has no system message (SmolLM2 adds its own default system prompt; Llama 3.2 a
system header with dates). Any template that writes fixed text around each turn, the way
ChatML, Llama 3 and most others do, translates exactly; one that does something else (drops a
turn, reorders, changes text by position in other ways) is caught by checking the pieces
against the real template on longer conversations, and refused with a message rather than
translated wrongly.
"""

from __future__ import annotations

import dataclasses

from .errors import UserError

# Marker contents: no whitespace (templates trim contents) and nothing a template escapes.
_SYSTEM, _USER1, _ASSISTANT1, _USER2, _ASSISTANT2, _USER3 = (
    "FTSsystemMARK", "FTSuser1MARK", "FTSassistant1MARK", "FTSuser2MARK", "FTSassistant2MARK", "FTSuser3MARK")


@dataclasses.dataclass(frozen=True)
class TemplatePieces:
    """The fixed text a chat template writes around the turns of a conversation."""
    before_system: str      # before a system prompt
    system_to_user: str     # after the system prompt, before the first user turn
    no_system: str          # before the first user turn when there is no system message
    user_to_assistant: str  # after a user turn that an assistant turn follows
    generation: str         # after the last user turn: the opening of the reply to generate
    assistant_to_user: str  # after an assistant turn that a user turn follows

    def render(self, messages: list[dict]) -> str:
        """The text Ollama builds from the TEMPLATE below for `messages` (an optional system
        message first, then user and assistant turns in turn, ending with a user turn)."""
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        turns = messages[1:] if system is not None else messages
        out = [self.before_system + system + self.system_to_user if system else self.no_system]
        for i, m in enumerate(turns):
            last = i == len(turns) - 1
            if m["role"] == "user":
                out.append(m["content"] + (self.generation if last else self.user_to_assistant))
            else:
                out.append(m["content"] + ("" if last else self.assistant_to_user))
        return "".join(out)


def _between(text: str, start: str | None, end: str | None, what: str) -> str:
    """The text between markers `start` and `end` (None: the beginning / the end of `text`)."""
    i = 0 if start is None else text.find(start)
    j = len(text) if end is None else text.find(end, max(i, 0))
    if i < 0 or j < 0:
        raise UserError(f"the chat template does not write the {what} of a conversation where Ollama's "
                        f"template must: export without a Modelfile, or use a model with a standard chat "
                        f"template (ChatML, Llama 3)")
    return text[(i + len(start)) if start is not None else 0:j]


def template_pieces(tokenizer) -> TemplatePieces:
    """The pieces of `tokenizer`'s chat template (see the module docstring), without the BOS
    the template writes when the tokenizer adds one itself (llama.cpp and Ollama add it)."""
    def render(messages, generation):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        bos = tokenizer.bos_token
        if bos and adds_bos(tokenizer) and text.startswith(bos):
            text = text[len(bos):]
        return text

    system = {"role": "system", "content": _SYSTEM}
    u1, a1, u2 = ({"role": "user", "content": _USER1}, {"role": "assistant", "content": _ASSISTANT1},
                  {"role": "user", "content": _USER2})
    with_system = render([system, u1], True)
    two_turns = render([system, u1, a1, u2], True)
    alone = render([u1], True)
    pieces = TemplatePieces(
        before_system=_between(with_system, None, _SYSTEM, "system prompt"),
        system_to_user=_between(with_system, _SYSTEM, _USER1, "first user turn"),
        no_system=_between(alone, None, _USER1, "first user turn"),
        user_to_assistant=_between(two_turns, _USER1, _ASSISTANT1, "assistant turn"),
        generation=_between(with_system, _USER1, None, "reply opening"),
        assistant_to_user=_between(two_turns, _ASSISTANT1, _USER2, "second user turn"))
    checks = [[u1], [system, u1], [u1, a1, u2], [system, u1, a1, u2],
              [system, u1, a1, u2, {"role": "assistant", "content": _ASSISTANT2}, {"role": "user", "content": _USER3}]]
    for messages in checks:
        if pieces.render(messages) != render(messages, True):
            raise UserError("the model's chat template writes turns in a way an Ollama TEMPLATE cannot say "
                            "(its text depends on more than the turn's role): the GGUF file holds the chat "
                            "template itself, which llama.cpp and LM Studio use; for Ollama write the "
                            "TEMPLATE by hand")
    return pieces


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts plain text with its BOS token (Llama 3 does, SmolLM2 not)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def adds_eos(tokenizer) -> bool:
    """Whether the tokenizer ends plain text with its EOS token (few chat tokenizers do)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer("a")["input_ids"]
    return eos is not None and bool(ids) and ids[-1] == eos


def _go_text(piece: str) -> str:
    """A piece as literal text of a Go template inside a Modelfile's triple quotes."""
    if "{{" in piece or "}}" in piece or '"""' in piece:
        raise UserError(f"the chat template's text {piece!r} holds '{{{{', '}}}}' or '\"\"\"', which a "
                        f"Modelfile TEMPLATE cannot hold as plain text: write the TEMPLATE by hand")
    return piece


def go_template(p: TemplatePieces) -> str:
    """Ollama's TEMPLATE for the pieces: the same text TemplatePieces.render builds. Every
    literal piece is followed by an action without a left trim marker ({{ not {{-), so no
    newline of the template itself is lost; the layout newlines are all trimmed."""
    t = _go_text
    return (
        f'{{{{- if .System }}}}{t(p.before_system)}{{{{ .System }}}}{t(p.system_to_user)}'
        f'{{{{ else }}}}{t(p.no_system)}{{{{ end }}}}\n'
        '{{- range $i, $_ := .Messages }}\n'
        '{{- $last := eq (len (slice $.Messages $i)) 1 }}\n'
        f'{{{{- if eq .Role "user" }}}}{{{{ .Content }}}}{{{{ if $last }}}}{t(p.generation)}'
        f'{{{{ else }}}}{t(p.user_to_assistant)}{{{{ end }}}}\n'
        f'{{{{- else if eq .Role "assistant" }}}}{{{{ .Content }}}}{{{{ if not $last }}}}{t(p.assistant_to_user)}'
        '{{ end }}\n'
        '{{- end }}\n'
        '{{- end }}')


def _quoted(text: str) -> str:
    """A Modelfile string value: triple-quoted, which keeps newlines and quotes."""
    if '"""' in text:
        raise UserError('a Modelfile value cannot hold """: remove it from the system prompt')
    return f'"""{text}"""'


def modelfile(gguf_name: str, tokenizer, stop_ids: list[int], system_prompt: str | None) -> str:
    """The Modelfile beside `gguf_name`: FROM, TEMPLATE, a stop PARAMETER for every token that
    ends a reply in the studio's chat, and SYSTEM when the run trained with one system prompt."""
    pieces = template_pieces(tokenizer)
    lines = ["# Made by Fine-Tune Studio. `ollama create my-model -f Modelfile`, then `ollama run my-model`.",
             f"FROM ./{gguf_name}", "", f"TEMPLATE {_quoted(go_template(pieces))}", ""]
    for token in dict.fromkeys(tokenizer.convert_ids_to_tokens(stop_ids)):
        if token:
            lines.append(f'PARAMETER stop "{token}"')
    if system_prompt:
        lines += ["", f"SYSTEM {_quoted(system_prompt)}"]
    return "\n".join(lines) + "\n"
