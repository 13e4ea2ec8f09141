"""Character offsets of tokens in served text (text_offset), with multi-byte characters split over tokens."""

from alignlab.models.load import load_tokenizer
from alignlab.serve.output import char_offset, token_bytes


def test_char_offsets_across_split_and_stray_bytes():
    tok = load_tokenizer("tiny-random")
    byte = {b: next(i for i in range(len(tok)) if token_bytes(tok, i) == [b]) for b in (0xD0, 0xB6)}
    a, semi = tok("a", add_special_tokens=False).input_ids, tok.convert_tokens_to_ids(";")
    # "aж;" with ж as two byte tokens: the second starts inside ж, which begins at character 1
    whole = a + [byte[0xD0], byte[0xB6], semi]
    text = tok.decode(whole)
    assert text == "aж;" and [char_offset(tok, whole, k) for k in range(4)] == [0, 1, 1, 2]
    # a stray lead byte no later token completes stays a U+FFFD of the text: ";" is at 2 (it said 1)
    stray = a + [byte[0xD0], semi]
    assert tok.decode(stray) == "a\ufffd;" and char_offset(tok, stray, 2) == 2
