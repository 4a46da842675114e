"""Build a tiny random-weight Llama and a locally trained tokenizer that vLLM can serve.

Why: the demo and the end-to-end tests need a *real* vLLM, but nothing may be downloaded. A
2-layer Llama with 128 hidden units runs on CPU in well under a second per request, and its
metrics are exactly those of any other model. The directory is built once (atomically, into a
temporary sibling that is then renamed) and reused by every later run; the build is
deterministic (fixed seed, fixed corpus), so two machines build the same model.

Shape (the one the shared fixtures were captured with): hidden 128, 2 layers, 2 attention heads,
1 KV head, head_dim 64 (the CPU attention backend rejects smaller heads), vocab 512.

    python -m demo.tinymodel [DIR]     # builds (or reuses) and prints the directory
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

#: bump when the recipe changes, so stale caches are not reused
RECIPE = "tinyllama-v1"
VOCAB_SIZE = 512
MAX_POSITIONS = 2048
SEED = 1234
#: tells a finished build from an interrupted one
MARKER = ".tinymodel-complete"

# A small fixed word list: the traffic generator writes prompts from it, so the BPE tokenizer
# trained on a corpus of these words turns most words into one or two tokens.
SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "pa",
    "do",
    "fi",
    "gu",
    "he",
    "ja",
    "bo",
    "ce",
    "wi",
    "xu",
    "yo",
)


def words(count: int = 400, seed: int = SEED) -> list[str]:
    """A deterministic vocabulary of pseudo-words (2-3 syllables each)."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def default_dir() -> Path:
    """Where the model is cached: ``$VLLM_SIDECAR_TINYMODEL_DIR`` or the user cache directory."""
    env = os.environ.get("VLLM_SIDECAR_TINYMODEL_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vllm-cache-sidecar" / RECIPE


def is_built(path: Path) -> bool:
    return (path / MARKER).is_file()


def _corpus(lines: int = 2000) -> list[str]:
    rng = random.Random(SEED + 1)
    vocab = words()
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 30))) for _ in range(lines)]


def _build_tokenizer(out: Path) -> None:
    """Byte-level BPE trained on the fixed corpus: any text encodes, no unknown tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<unk>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
    )
    fast.save_pretrained(str(out))


def _build_model(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.to(torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)


def build(path: Path | None = None, force: bool = False) -> Path:
    """Return a ready model directory, building it first unless a finished build is there."""
    path = Path(path) if path is not None else default_dir()
    if is_built(path) and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        _build_tokenizer(tmp)
        _build_model(tmp)
        (tmp / MARKER).write_text(json.dumps({"recipe": RECIPE, "vocab": VOCAB_SIZE}) + "\n")
        if is_built(path) and not force:  # another process finished first: keep its build
            shutil.rmtree(tmp, ignore_errors=True)
            return path
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = Path(argv[0]) if argv else None
    print(build(target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
