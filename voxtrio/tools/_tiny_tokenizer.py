"""The tiny checkpoints' tokenizer files: a small BPE vocabulary voxcpm's loader accepts."""

from __future__ import annotations

from voxtrio.tools._tiny_config import json_text

# Hard-coded in voxcpm: 101/102 open and close the audio span, 103/104 (VoxCPM2)
# the reference-audio span. The tokenizer reserves these ids for special tokens.
_AUDIO_TOKENS = ("<|audio_start|>", "<|audio_end|>", "<|ref_audio_start|>", "<|ref_audio_end|>")
_FIRST_AUDIO_TOKEN_ID = 101

# A few multi-character tokens (merged by BPE) so tokenization is not just
# characters; the Chinese words also exercise voxcpm's mask_multichar_chinese_tokens.
_WORDS = (
    "▁the", "▁and", "▁to", "▁of", "▁a", "▁is", "▁in", "▁it", "▁you", "▁that", "▁for",
    "▁on", "▁with", "▁this", "▁hello", "▁world", "▁voice", "▁speech", "▁from",
    "ing", "ed", "er", "es", "th", "▁Hello", "▁The",
    "你好", "世界", "今天", "天气", "我们", "中国", "语音", "合成", "声音", "流式",
)  # fmt: skip
_CHINESE_PUNCTUATION = "，。！？、：；"


def tokenizer_files() -> dict[str, str]:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` texts."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    for token in ("<unk>", "<s>", "</s>", "▁"):
        add(token)
    for code in range(0x21, 0x7F):  # printable ASCII
        add(chr(code))
    while len(vocab) < _FIRST_AUDIO_TOKEN_ID:
        add(f"<|reserved_{len(vocab)}|>")
    for token in _AUDIO_TOKENS:
        add(token)
    for byte in range(256):  # byte fallback: any text encodes
        add(f"<0x{byte:02X}>")
    for char in _CHINESE_PUNCTUATION:
        add(char)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        current = word[0]
        add(current)
        for char in word[1:]:
            add(char)
            if (current, char) not in merges:
                merges.append((current, char))
            current += char
            add(current)
    assert vocab[_AUDIO_TOKENS[0]] == _FIRST_AUDIO_TOKEN_ID

    # The pipeline transformers >= 5 rebuilds for LlamaTokenizerFast (it keeps only
    # vocab and merges from tokenizer.json), written out so 4.x, which uses the file
    # as is, tokenizes the same way.
    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    specials = ["<unk>", "<s>", "</s>", *_AUDIO_TOKENS]
    reserved = [t for t in vocab if t.startswith("<|reserved_")]
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in specials + reserved]
    )

    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "legacy": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
    }
    special_tokens_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return {
        "tokenizer.json": tokenizer.to_str(pretty=True),
        "tokenizer_config.json": json_text(tokenizer_config),
        "special_tokens_map.json": json_text(special_tokens_map),
    }
