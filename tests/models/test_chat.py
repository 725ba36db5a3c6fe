from __future__ import annotations

from traitwatch.models import ACKNOWLEDGEMENT, build_tiny_tokenizer, encode_chat, encode_text, supports_system_role


def test_chat_encoding_has_exactly_one_bos():
    tok = build_tiny_tokenizer()
    ids = encode_chat(tok, "What is 2+2?", "Be honest.")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert ids.count(tok.bos_token_id) == 1
    # the naive path (render, then tokenise) is what doubles it; the test above would catch it
    rendered = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert tok(rendered).input_ids[:2] == [tok.bos_token_id, tok.bos_token_id]


def test_system_prompt_goes_in_the_system_turn_when_supported():
    tok = build_tiny_tokenizer()
    assert supports_system_role(tok)
    text = tok.decode(encode_chat(tok, "Q?", "SYS"))
    assert "<|system|>SYS<|end|><|user|>Q?<|end|><|assistant|>" in text
    assert ACKNOWLEDGEMENT not in text


def test_models_without_system_role_get_user_turn_and_acknowledgement():
    tok = build_tiny_tokenizer(system_role=False)
    assert not supports_system_role(tok)
    text = tok.decode(encode_chat(tok, "Q?", "SYS"))
    assert text.endswith(f"<|user|>SYS<|end|><|assistant|>{ACKNOWLEDGEMENT}<|end|><|user|>Q?<|end|><|assistant|>")
    assert encode_chat(tok, "Q?", "SYS").count(tok.bos_token_id) == 1


def test_plain_text_has_one_bos():
    tok = build_tiny_tokenizer()
    ids = encode_text(tok, "An honest person. When asked, they")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
