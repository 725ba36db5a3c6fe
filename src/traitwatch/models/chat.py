"""Turn prompts into token ids exactly as the model sees them at inference time.

Two rules from METHOD.md 1 live here:
* models without a system role (Gemma) get the system prompt as a user turn, an assistant
  acknowledgement, then the question;
* never add a second BOS: ids come straight from `apply_chat_template(tokenize=True)` (which does not
  re-add special tokens) instead of tokenising the rendered string, which would.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

__all__ = ["ACKNOWLEDGEMENT", "encode_chat", "encode_text", "supports_system_role"]

ACKNOWLEDGEMENT = "Understood. I will follow these instructions."
_SENTINEL = "traitwatch-system-sentinel"


def supports_system_role(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the chat template renders a system message (Gemma's raises; some drop it)."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "x"}],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:  # jinja raise_exception / TemplateError: the template refuses the role
        return False
    return _SENTINEL in text


def _ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding by default; older versions a plain list.
    if isinstance(encoded, dict) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return [int(i) for i in encoded]


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    user: str,
    system: str | None = None,
    *,
    system_role: bool | None = None,
) -> list[int]:
    """Token ids of a one-question chat, up to and including the assistant-turn header.

    `system_role=None` detects support; pass it explicitly when encoding many prompts.
    """
    if not getattr(tokenizer, "chat_template", None):
        # A base model without a template: plain text, with the tokenizer's own BOS once.
        text = f"{system}\n\n{user}" if system else user
        return encode_text(tokenizer, text)
    if system_role is None:
        system_role = supports_system_role(tokenizer) if system else True
    messages: list[dict[str, str]]
    if system is None:
        messages = [{"role": "user", "content": user}]
    elif system_role:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    else:
        messages = [
            {"role": "user", "content": system},
            {"role": "assistant", "content": ACKNOWLEDGEMENT},
            {"role": "user", "content": user},
        ]
    return _ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of raw text (contrastive passages), with at most one BOS."""
    ids = _ids(tokenizer(text, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    while bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def encode_many(
    tokenizer: PreTrainedTokenizerBase, users: Sequence[str], systems: Sequence[str | None]
) -> list[list[int]]:
    """Encode many chats, detecting system-role support once."""
    role = supports_system_role(tokenizer)
    return [encode_chat(tokenizer, u, s, system_role=role) for u, s in zip(users, systems, strict=True)]
