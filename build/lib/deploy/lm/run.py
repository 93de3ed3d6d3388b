"""Run a packaged LM deploy (dist/<target>/): load its manifest, check the artifact and its tokenizer, generate.

The artifact folder must be the one the manifest records (sha256 of every file), and its tokenizer the one
the manifest and lm.json record; a prompt is checked against the artifact's vocabulary and limits before
the first graph runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import DeployError, TokenizerError
from deploy.lm.artifact import LMArtifact, get_lm_backend
from deploy.lm.generate import Generation, check_prompt, greedy
from deploy.lm.manifest import LMManifest
from deploy.lm.tokenizer import ByteTokenizer


@dataclass(frozen=True)
class Packaged:
    manifest: LMManifest
    artifact: LMArtifact
    tokenizer: ByteTokenizer


def open_dist(dist: Path) -> Packaged:
    """The deploy in `dist`; its tokenizer is checked first (the named error), then every file of the artifact."""
    dist = Path(dist)
    manifest = LMManifest.load(dist / "manifest.json")
    artifact = LMArtifact.load(dist / manifest.artifact.dir)
    tokenizer = artifact.tokenizer()  # against lm.json's vocabulary and sha256
    if tokenizer.sha256 != manifest.tokenizer.sha256:
        raise TokenizerError(
            f"{artifact.tokenizer_path} is not the tokenizer {dist}/manifest.json records; deploy again"
        )
    digest = artifact.sha256()
    if digest != manifest.artifact.sha256:
        raise DeployError(
            f"{artifact.dir} (sha256 {digest[:12]}…) is not the artifact {dist / 'manifest.json'} records "
            f"({manifest.artifact.sha256[:12]}…): it changed after deploying; deploy again"
        )
    return Packaged(manifest, artifact, tokenizer)


def generate_text(
    dist: Path,
    prompt: str,
    max_new: int,
    on_text: Callable[[str], None] | None = None,
) -> tuple[Packaged, Generation]:
    """Greedy generation from the packaged artifact; `on_text` receives the text as it forms."""
    packaged = open_dist(dist)
    artifact, tokenizer = packaged.artifact, packaged.tokenizer
    spec = artifact.spec
    ids = check_prompt(tokenizer.encode(prompt), spec.vocab, min(spec.longest_prompt, spec.max_context), "the artifact")
    session = get_lm_backend(spec.backend).open(artifact)
    if on_text is not None:
        on_text(prompt)  # echoed once the prompt is known to fit
    stream = tokenizer.decode_stream()
    emit = None if on_text is None else (lambda token: on_text(stream.push(token)))
    out = greedy(session, ids.tolist(), max_new, vocab=spec.vocab, max_context=spec.max_context,
                 longest_prompt=spec.longest_prompt, on_token=emit)  # fmt: skip
    return packaged, out
