"""Can this draft model propose tokens for this target? Both must speak the same token ids."""

from __future__ import annotations

from pathlib import Path

from localspec.engine.llama_model import LlamaModel
from localspec.errors import IncompatibleModelsError

# llama.cpp's own speculative example tolerates this much difference in vocabulary size (padding tokens).
MAX_VOCAB_SIZE_DIFFERENCE = 128
TOKEN_TEXT_SAMPLE = 2000


def _sample_ids(n_shared: int) -> list[int]:
    stride = max(1, n_shared // TOKEN_TEXT_SAMPLE)
    ids = set(range(0, n_shared, stride))
    # Special and added tokens sit at the end of most vocabularies: check all of the last 512.
    ids.update(range(max(0, n_shared - 512), n_shared))
    return sorted(ids)


def vocabulary_differences(target: LlamaModel, draft: LlamaModel) -> list[str]:
    """Human-readable reasons the two vocabularies differ; empty when compatible."""
    problems: list[str] = []
    if target.vocab_type() != draft.vocab_type():
        problems.append(f"tokenizer type differs (target {target.vocab_type()}, draft {draft.vocab_type()})")
    if abs(target.n_vocab - draft.n_vocab) > MAX_VOCAB_SIZE_DIFFERENCE:
        problems.append(
            f"vocabulary size differs by more than {MAX_VOCAB_SIZE_DIFFERENCE} "
            f"(target {target.n_vocab}, draft {draft.n_vocab})"
        )
    if target.adds_bos() != draft.adds_bos():
        problems.append(f"add-BOS setting differs (target {target.adds_bos()}, draft {draft.adds_bos()})")
    target_special, draft_special = target.special_tokens(), draft.special_tokens()
    for name in ("bos", "eos", "eot"):
        if target_special[name] != draft_special[name]:
            problems.append(
                f"{name.upper()} token differs (target id {target_special[name]}, "
                f"draft id {draft_special[name]})"
            )
    if not problems:
        for token in _sample_ids(min(target.n_vocab, draft.n_vocab)):
            target_text, draft_text = target.token_text(token), draft.token_text(token)
            if target_text != draft_text:
                problems.append(
                    f"token {token} is {target_text!r} in the target but {draft_text!r} in the draft"
                )
                break
    return problems


def ensure_compatible(target: LlamaModel, draft: LlamaModel) -> None:
    problems = vocabulary_differences(target, draft)
    if problems:
        raise IncompatibleModelsError(
            f"The draft model {draft.path} cannot be used with the target model {target.path}: "
            + "; ".join(problems)
            + ". A draft must share the target's tokenizer (usually a smaller model of the same family). "
            'Choose another draft, or run without one (--no-draft / speculative.mode = "ngram").'
        )


def check_compatible(target_path: Path, draft_path: Path) -> None:
    """Compare two GGUF files' vocabularies without loading weights; raises IncompatibleModelsError."""
    target = LlamaModel(Path(target_path), role="target", n_ctx_per_seq=0, vocab_only=True)
    draft = LlamaModel(Path(draft_path), role="draft", n_ctx_per_seq=0, vocab_only=True)
    try:
        ensure_compatible(target, draft)
    finally:
        target.close()
        draft.close()
