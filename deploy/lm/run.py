"""Run a packaged LM deploy (dist/<target>/): load its manifest, check the artifact and its tokenizer, generate.

The artifact folder must be the one the manifest records (sha256 of every file), and its tokenizer the one
the manifest and lm.json record; a prompt is checked against the artifact's vocabulary and limits before
the first graph runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import ConfigFileError, DeployError, TokenizerError
from deploy.lm.artifact import SPEC_FILE, LMArtifact, get_lm_backend
from deploy.lm.generate import Generation, check_prompt, encode_prompt, greedy
from deploy.lm.tokenizer import ByteTokenizer
from deploy.packaging.manifest import LMManifest, inside


@dataclass(frozen=True)
class Packaged:
    manifest: LMManifest
    artifact: LMArtifact
    tokenizer: ByteTokenizer


def check_agrees(manifest: LMManifest, artifact: LMArtifact, manifest_path: Path) -> None:
    """lm.json says what the graphs take and the manifest what was deployed and measured: where they
    differ (one edited by hand), neither can be trusted, e.g. a max_context beyond what the graphs hold."""
    record, spec = manifest.artifact, artifact.spec
    pairs = {
        "backend": (spec.backend, record.backend),
        "cache": (spec.cache, record.cache),
        "vocab": (spec.vocab, manifest.tokenizer.vocab),
        "max_context": (spec.max_context, record.max_context),
        "prompt_buckets": (list(spec.prompt_buckets), record.prompt_buckets),
        "kv_shape": (list(spec.kv_shape), record.kv_shape),
        "files": (spec.files, record.files),
    }
    for field, (in_spec, in_manifest) in pairs.items():
        if in_spec != in_manifest:
            raise ConfigFileError(
                f"{artifact.dir / SPEC_FILE} gives {field} {in_spec} but {manifest_path} records {in_manifest}: "
                "the two files of the deploy disagree; deploy again"
            )


def open_dist(dist: Path) -> Packaged:
    """The deploy in `dist`; its tokenizer is checked first (the named error), then that lm.json agrees with the
    manifest, then every file of the artifact."""
    dist = Path(dist)
    manifest_path = dist / "manifest.json"
    if not manifest_path.exists():
        raise DeployError(f"no manifest at {manifest_path}; deploy a language model there first (make deploy TARGET=…)")
    manifest = LMManifest.load(manifest_path)
    artifact = LMArtifact.load(inside(dist, manifest.artifact.dir, named_by=manifest_path, field="artifact.dir"))
    tokenizer = artifact.tokenizer()  # against lm.json's vocabulary and sha256
    if tokenizer.sha256 != manifest.tokenizer.sha256:
        raise TokenizerError(
            f"{artifact.tokenizer_path} is not the tokenizer {dist}/manifest.json records; deploy again"
        )
    check_agrees(manifest, artifact, manifest_path)
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
    longest = min(spec.longest_prompt, spec.max_context)
    ids = check_prompt(encode_prompt(tokenizer, prompt), spec.vocab, longest, "the artifact")
    session = get_lm_backend(spec.backend).open(artifact)
    if on_text is not None:
        on_text(prompt)  # echoed once the prompt is known to fit
    stream = tokenizer.decode_stream()
    emit = None if on_text is None else (lambda token: on_text(stream.push(token)))
    out = greedy(session, ids.tolist(), max_new, vocab=spec.vocab, max_context=spec.max_context,
                 longest_prompt=spec.longest_prompt, on_token=emit)  # fmt: skip
    return packaged, out
