"""Side-by-side measurements of the project's claims: one harness, one small module per comparison.

Run a comparison from the repository root as `python -m benchmarks.<name>` (add `--quick` for a smoke test
of seconds: a tiny model, one subnet, a short protocol; its figures are not to be quoted). Each writes
`benchmarks/results/<name>.json` and `.md` (or under `--out`); the documentation's results pages are
rendered again from the JSON by each module's own `markdown()`.

- `harness`: the subnets under test, interleaved measurement, summary statistics, the environment record,
  the results writer and the markdown renderer, shared by every comparison;
- conversion paths, same subnets measured side by side: `ort_paths`, `tflite_paths`, `executorch_paths`,
  `gpu_paths`; for language models, `lm_paths` (KV cache or not, LiteRT, peer exporters);
- search: `selector_vs_oracle`, `selector_real_oracle`; for language models, `lm_heuristics` (latency-aware
  slices vs MatFormer Lab's heuristics);
- families and training: `families`, `stitch_and_learngene`, `sampling`;
- scale and executors: `scale_probe`, `ray_throughput`;
- latency transfer on others' data: `estimate_transfer`, `transfer_external`.
"""

COMPARISONS = (
    "ort_paths",
    "tflite_paths",
    "executorch_paths",
    "gpu_paths",
    "lm_paths",
    "selector_vs_oracle",
    "selector_real_oracle",
    "lm_heuristics",
    "families",
    "stitch_and_learngene",
    "sampling",
    "scale_probe",
    "ray_throughput",
    "estimate_transfer",
    "transfer_external",
)
