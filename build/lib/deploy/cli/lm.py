"""`elastic-deploy generate`: run a packaged language model, streaming its tokens."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from deploy.cli.app import _say, app


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="the text to continue")],
    dist: Annotated[Path, typer.Option(help="a deployed LM folder (dist/<target>) holding manifest.json")],
    max_new: Annotated[int, typer.Option("--max-new", min=1, help="tokens to generate at most")] = 64,
) -> None:
    """Generate greedily from a deployed language model; print time to first token and tokens/s."""
    from deploy.lm.run import generate_text

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    packaged, out = generate_text(dist, prompt, max_new, on_text=write)
    write("\n")
    lat = packaged.manifest.latency
    tps = f"{out.tokens_per_s:.0f} tokens/s ({out.ms_per_token:.3f} ms/token)" if out.tokens_per_s else "n/a"
    _say(
        f"[bold green]{len(out.tokens)} tokens[/]: TTFT {out.ttft_ms:.2f} ms for {len(out.prompt)} prompt tokens, "
        f"{tps}; predicted TTFT {lat.predicted_ttft_ms:.2f} ms at {lat.ttft_prompt} tokens, "
        f"{lat.predicted_ms_per_token:.3f} ms/token at {lat.decode_context} of context "
        f"({lat.predicted_tokens_per_s:.0f} tokens/s; {lat.method} table)"
    )
