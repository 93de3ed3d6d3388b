"""ElasticViT: a hybrid supernet (conv stem, MBConv stages, transformer stages) in the AutoFormer/OFA style.

Every stage chooses its depth (first-n blocks kept) and width (first-k channels or embed dims). Each kept
MBConv block chooses its expansion ratio (first hidden channels) and kernel (the centre k×k of the largest
kernel, as OFA does); each kept transformer block its heads (first-h heads, head dim fixed) and FFN width
(mlp ratio × stage width, first hidden units). A stride-2 first block or a 3×3 merge conv downsamples into
each stage. SubnetConfig: `stem` (width), `depth` and `width` (one per stage), `expand` and `kernel` (one per
kept MBConv block) and `heads` and `ffn` (one per kept transformer block), in execution order.

BatchNorm statistics are per subnet (OFA/BigNAS practice): a subnet's channels see different inputs than
the full model's, so shared running statistics are wrong for most subnets. In eval mode, `forward` and
`extract` use statistics recalibrated for that config on the training images the supernet keeps in its
checkpoint (`bn_images`); training uses batch statistics as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from deploy.families.base import BlockKey, ImageSupernet
from deploy.families.elastic_vit_blocks import (
    HybridViT,
    MBConv,
    Merge,
    PoolHead,
    Stem,
    TransformerBlock,
    block_macs,
    block_params,
    make_block,
    out_size,
)
from deploy.search.space import Gene, Genes, SearchSpace, SubnetConfig

FAMILY = "elastic_vit"
BN_CACHE = 256  # configs whose recalibrated statistics are kept (evolution search revisits its population)


@dataclass(frozen=True)
class ElasticViTDims:
    """Option tuples (ascending): the last option of each is the supernet's full size."""

    image: int = 28
    channels: int = 1
    classes: int = 10
    stem: tuple[int, ...] = (8, 16)
    depths: tuple[int, ...] = (1, 2, 3)  # per stage
    conv_widths: tuple[tuple[int, ...], ...] = ((16, 24), (24, 32))
    conv_strides: tuple[int, ...] = (1, 2)
    expands: tuple[int, ...] = (2, 3, 4)
    kernels: tuple[int, ...] = (3, 5, 7)
    vit_widths: tuple[tuple[int, ...], ...] = ((48, 64), (64, 96))
    vit_strides: tuple[int, ...] = (1, 2)
    vit_heads: tuple[tuple[int, ...], ...] = ((2, 3, 4), (2, 4, 6))
    head_dim: int = 16
    mlp_ratios: tuple[int, ...] = (2, 3, 4)
    bn_images: int = 256  # training images kept in the checkpoint to recalibrate BatchNorm per subnet

    @property
    def widths(self) -> tuple[tuple[int, ...], ...]:
        return self.conv_widths + self.vit_widths

    @property
    def n_conv(self) -> int:
        return len(self.conv_widths)


def _cut(name: str, src: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The first entries of `src` along each dim, but the centre of conv kernels (a view: BN stats update)."""
    if name.endswith(("qkv.weight", "qkv.bias")):  # q, k and v each keep their first heads
        return torch.cat([_cut("", part, (shape[0] // 3, *shape[1:])) for part in src.chunk(3)])
    index = tuple(
        slice((full - n) // 2, (full - n) // 2 + n) if src.dim() == 4 and i >= 2 else slice(0, n)
        for i, (full, n) in enumerate(zip(src.shape, shape, strict=True))
    )
    return src[index]


class ElasticViT(ImageSupernet):
    family = FAMILY
    dims_type = ElasticViTDims

    def __init__(self, variant: str, dims: ElasticViTDims) -> None:
        super().__init__(variant)
        if not dims.vit_widths or len(dims.vit_heads) != len(dims.vit_widths) or min(dims.kernels) % 2 == 0:
            raise ValueError("need >= 1 transformer stage, heads options per transformer stage and odd kernels")
        self.dims = d = dims
        full = max(d.depths)
        self.stem = Stem(d.channels, d.stem[-1])
        # Full-size blocks; a block's first input width is the previous stage's largest width.
        cin, size, self.convs = d.stem[-1], out_size(d.image, 2), nn.ModuleList()
        for widths, stride in zip(d.conv_widths, d.conv_strides, strict=True):
            blocks = [
                MBConv(cin if j == 0 else widths[-1], widths[-1], d.expands[-1], d.kernels[-1], stride if j == 0 else 1)
                for j in range(full)
            ]
            self.convs.append(nn.ModuleList(blocks))
            cin, size = widths[-1], out_size(size, stride)
        self.merges, self.vits = nn.ModuleList(), nn.ModuleList()
        for v, (widths, stride, heads) in enumerate(zip(d.vit_widths, d.vit_strides, d.vit_heads, strict=True)):
            self.merges.append(Merge(cin, widths[-1], stride, size, v > 0))
            ffn = d.mlp_ratios[-1] * widths[-1]
            self.vits.append(
                nn.ModuleList(TransformerBlock(widths[-1], heads[-1], d.head_dim, ffn) for _ in range(full))
            )
            cin, size = widths[-1], out_size(size, stride)
        self.head = PoolHead(cin, d.classes)
        # Random until training stores real ones (set_calibration_inputs); saved with the weights.
        images = torch.randn(d.bn_images, d.channels, d.image, d.image, generator=torch.Generator().manual_seed(0))
        self.register_buffer("bn_images", images)
        self._templates: dict[BlockKey, nn.Module] = {}  # weightless (meta) dense blocks, one per shape
        self._bn_stats: dict[str, list[dict[str, torch.Tensor]]] = {}  # config id -> per block BN buffers

    # --- search space -------------------------------------------------------------------------
    def space(self) -> SearchSpace:
        # Slots past a stage's depth are ignored by decode, so several gene vectors share a config (as in OFA);
        # encode writes option 0 there. Rejecting them instead would make random sampling hopeless.
        d = self.dims
        genes = [Gene("stem", d.stem)]
        for s, widths in enumerate(d.widths):
            genes += [Gene(f"s{s}.depth", d.depths), Gene(f"s{s}.width", widths)]
            for j in range(max(d.depths)):
                if s < d.n_conv:
                    genes += [Gene(f"s{s}.b{j}.expand", d.expands), Gene(f"s{s}.b{j}.kernel", d.kernels)]
                else:
                    genes += [Gene(f"s{s}.b{j}.heads", d.vit_heads[s - d.n_conv]), Gene(f"s{s}.b{j}.mlp", d.mlp_ratios)]
        names = tuple(g.name for g in genes)

        def decode(g: Genes) -> SubnetConfig:
            v = {gene.name: gene.options[i] for gene, i in zip(genes, g, strict=True)}
            depth = [v[f"s{s}.depth"] for s in range(len(d.widths))]
            width = [v[f"s{s}.width"] for s in range(len(d.widths))]
            kept = [(s, j) for s, n in enumerate(depth) for j in range(n)]
            conv, vit = [b for b in kept if b[0] < d.n_conv], [b for b in kept if b[0] >= d.n_conv]
            return self.config(
                depth,
                [v[f"s{s}.b{j}.mlp"] * width[s] for s, j in vit],
                width=width,
                heads=[v[f"s{s}.b{j}.heads"] for s, j in vit],
                expand=[v[f"s{s}.b{j}.expand"] for s, j in conv],
                kernel=[v[f"s{s}.b{j}.kernel"] for s, j in conv],
                stem=v["stem"],
            )

        def encode(config: SubnetConfig) -> Genes:
            c = self._check(config)
            v: dict[str, int] = {"stem": c["stem"]}  # type: ignore[dict-item]
            conv, vit = iter(zip(c["expand"], c["kernel"], strict=True)), iter(zip(c["heads"], c["ffn"], strict=True))  # type: ignore[call-overload]
            for s, (n, w) in enumerate(zip(c["depth"], c["width"], strict=True)):  # type: ignore[call-overload]
                v[f"s{s}.depth"], v[f"s{s}.width"] = n, w
                for j in range(n):
                    if s < d.n_conv:
                        v[f"s{s}.b{j}.expand"], v[f"s{s}.b{j}.kernel"] = next(conv)
                    else:
                        heads, ffn = next(vit)
                        v[f"s{s}.b{j}.heads"], v[f"s{s}.b{j}.mlp"] = heads, ffn // w
            return tuple(g.options.index(v[name]) if name in v else 0 for g, name in zip(genes, names, strict=True))

        return SearchSpace(FAMILY, tuple(genes), decode, encode, distinct=self._distinct_configs)

    def _distinct_configs(self) -> int:
        # Per stage: its widths × Σ over depths of (per-block choices)^depth; genes past a depth repeat configs.
        d = self.dims
        total = len(d.stem)
        for s, widths in enumerate(d.widths):
            per_block = (
                len(d.expands) * len(d.kernels) if s < d.n_conv else len(d.vit_heads[s - d.n_conv]) * len(d.mlp_ratios)
            )
            total *= len(widths) * sum(per_block**n for n in d.depths)
        return total

    def config(
        self,
        depth: list[int] | tuple[int, ...],
        ffn: list[int] | tuple[int, ...],
        *,
        width: list[int] | tuple[int, ...] | None = None,
        heads: list[int] | tuple[int, ...] | None = None,
        expand: list[int] | tuple[int, ...] | None = None,
        kernel: list[int] | tuple[int, ...] | None = None,
        stem: int | None = None,
    ) -> SubnetConfig:
        """A validated config; the choices left out take their largest options."""
        d = self.dims
        depth, ffn = tuple(depth), tuple(ffn)
        known = sorted({r * w for ws in d.vit_widths for w in ws for r in d.mlp_ratios})
        if any(f not in known for f in ffn):
            raise ValueError(f"FFN widths must be mlp ratio × stage width, in {known}, got {ffn}")
        if len(depth) != len(d.widths) or any(n not in d.depths for n in depth):
            raise ValueError(f"depth must be one of {d.depths} for each of the {len(d.widths)} stages, got {depth}")
        width = tuple(width) if width is not None else tuple(ws[-1] for ws in d.widths)
        if len(width) != len(d.widths) or any(w not in ws for w, ws in zip(width, d.widths, strict=False)):
            raise ValueError(f"stage widths must be in {d.widths} (one per stage), got {width}")
        stem = d.stem[-1] if stem is None else stem
        if stem not in d.stem:
            raise ValueError(f"stem width must be in {d.stem}, got {stem}")
        n_conv = sum(depth[: d.n_conv])
        stage_of = [s for s in range(len(d.vit_widths)) for _ in range(depth[d.n_conv + s])]
        expand = tuple(expand) if expand is not None else (d.expands[-1],) * n_conv
        kernel = tuple(kernel) if kernel is not None else (d.kernels[-1],) * n_conv
        heads = tuple(heads) if heads is not None else tuple(d.vit_heads[s][-1] for s in stage_of)
        for name, values, options in (("expansion ratios", expand, d.expands), ("kernel sizes", kernel, d.kernels)):
            if len(values) != n_conv or any(v not in options for v in values):
                raise ValueError(f"{name} must be in {options}, one per kept MBConv block ({n_conv}), got {values}")
        if len(heads) != len(stage_of) or any(h not in d.vit_heads[s] for h, s in zip(heads, stage_of, strict=False)):
            raise ValueError(f"heads must be in {d.vit_heads} (per stage), one per kept transformer block, got {heads}")
        ratios = [[r * width[d.n_conv + s] for r in d.mlp_ratios] for s in stage_of]
        if len(ffn) != len(stage_of) or any(f not in rs for f, rs in zip(ffn, ratios, strict=False)):
            raise ValueError(f"FFN widths must be mlp ratio {d.mlp_ratios} × stage width per kept block, got {ffn}")
        choices = {"depth": depth, "width": width, "stem": stem, "expand": expand, "kernel": kernel}
        return SubnetConfig.make(FAMILY, {**choices, "heads": heads, "ffn": ffn})

    def smallest(self) -> SubnetConfig:
        space = self.space()  # option 0 of every gene is the smallest choice
        return space.decode((0,) * len(space.genes))

    def _check(self, config: SubnetConfig) -> dict[str, Any]:
        if config.family != FAMILY:
            raise ValueError(f"config of family {config.family} given to {FAMILY}")
        c = config.as_dict()
        self.config(c["depth"], c["ffn"], **{k: c[k] for k in ("width", "heads", "expand", "kernel", "stem")})  # type: ignore[arg-type]
        return c

    # --- running and cutting ------------------------------------------------------------------
    def _plan(self, config: SubnetConfig) -> list[tuple[BlockKey, nn.Module]]:
        """Each block's shape key and the full-size supernet block its weights are cut from, in order."""
        c, d = self._check(config), self.dims
        depth, width = c["depth"], c["width"]
        expand, kernel, heads, ffn = (iter(c[k]) for k in ("expand", "kernel", "heads", "ffn"))
        cin, size = c["stem"], out_size(d.image, 2)
        plan = [(BlockKey.of("stem", channels=d.channels, image=d.image, width=cin), self.stem)]
        for s, stage in enumerate(self.convs):
            for j in range(depth[s]):
                stride = d.conv_strides[s] if j == 0 else 1
                shape = {"expand": next(expand), "kernel": next(kernel), "stride": stride, "size": size}
                plan.append((BlockKey.of("mbconv", cin=cin, cout=width[s], **shape), stage[j]))
                cin, size = width[s], out_size(size, stride)
        for v, (stage, stride) in enumerate(zip(self.vits, d.vit_strides, strict=True)):
            dim = width[d.n_conv + v]
            merge = BlockKey.of("vit_merge", cin=cin, dim=dim, stride=stride, size=size, from_tokens=int(v > 0))
            plan.append((merge, self.merges[v]))
            cin, size = dim, out_size(size, stride)
            for j in range(depth[d.n_conv + v]):
                shape = {"heads": next(heads), "head_dim": d.head_dim, "ffn": next(ffn)}
                plan.append((BlockKey.of("vit_block", tokens=size * size, dim=dim, **shape), stage[j]))
        plan.append((BlockKey.of("pool_head", tokens=size * size, dim=cin, classes=d.classes), self.head))
        return plan

    def _sliced(self, src: nn.Module, like: nn.Module) -> dict[str, torch.Tensor]:
        full = src.state_dict(keep_vars=True)  # live parameters: gradients reach the supernet
        return {name: _cut(name, full[name], t.shape) for name, t in like.state_dict(keep_vars=True).items()}

    def _template(self, key: BlockKey) -> nn.Module:
        if key not in self._templates:
            with torch.device("meta"):
                self._templates[key] = make_block(key)
        return self._templates[key]

    def forward(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        # Runs the very dense blocks that extract builds, on cut weights: forward and extract cannot drift.
        config = config or self.largest()
        plan = self._plan(config)
        stats = None if self.training else self._calibrated(config, plan)
        for i, (key, src) in enumerate(plan):
            template = self._template(key).train(self.training)
            weights = self._sliced(src, template)
            x = functional_call(template, weights if stats is None else {**weights, **stats[i]}, (x,))
        return x

    def extract(self, config: SubnetConfig) -> nn.Module:
        plan = self._plan(config)
        stats = self._calibrated(config, plan)
        blocks = []
        for (key, src), block_stats in zip(plan, stats, strict=True):
            dense = make_block(key)
            dense.load_state_dict({**self._sliced(src, dense), **block_stats})
            blocks.append(dense)
        return HybridViT(*blocks).eval()

    # --- per-subnet BatchNorm statistics ------------------------------------------------------
    def set_calibration_inputs(self, inputs: Mapping[str, torch.Tensor]) -> None:
        """Keep the first `bn_images` training images for recalibrating BatchNorm per subnet."""
        x = inputs["input"]
        n = self.bn_images.shape[0]
        if x.shape[0] < n or tuple(x.shape[1:]) != tuple(self.bn_images.shape[1:]):
            raise ValueError(f"need {n} images of shape {tuple(self.bn_images.shape[1:])}, got {tuple(x.shape)}")
        with torch.no_grad():
            self.bn_images.copy_(x[:n])
        self._bn_stats.clear()

    def train(self, mode: bool = True) -> ElasticViT:
        if mode:  # weights are about to change: recalibrated statistics go stale
            self._bn_stats.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._bn_stats.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _calibrated(
        self, config: SubnetConfig, plan: list[tuple[BlockKey, nn.Module]]
    ) -> list[dict[str, torch.Tensor]]:
        """Each block's BatchNorm buffers measured on `bn_images` through this subnet (cached per config)."""
        if config.id in self._bn_stats:
            return self._bn_stats[config.id]
        stats = []
        # Outside inference mode: the buffers are loaded into extracted modules that may be exported.
        with torch.inference_mode(False), torch.no_grad():
            x = self.bn_images.clone()
            for key, src in plan:
                template = self._template(key)
                norms = {n: m for n, m in template.named_modules() if isinstance(m, nn.BatchNorm2d)}
                fresh = {}
                for n, m in norms.items():
                    prefix = f"{n}." if n else ""
                    fresh[f"{prefix}running_mean"] = torch.zeros(m.num_features)
                    fresh[f"{prefix}running_var"] = torch.ones(m.num_features)
                    fresh[f"{prefix}num_batches_tracked"] = torch.zeros((), dtype=torch.long)
                    m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
                x = functional_call(template.train(), {**self._sliced(src, template), **fresh}, (x,))
                for m in norms.values():
                    m.momentum = 0.1
                stats.append(fresh)
        if len(self._bn_stats) >= BN_CACHE:
            self._bn_stats.pop(next(iter(self._bn_stats)))
        self._bn_stats[config.id] = stats
        return stats

    # --- latency blocks -----------------------------------------------------------------------
    def blocks(self, config: SubnetConfig) -> list[BlockKey]:
        return [key for key, _ in self._plan(config)]

    def block_cover(self) -> list[SubnetConfig]:
        # Keys depend on adjacent stage widths and per-block choices, never on depth: every width
        # assignment at full depth, cycling through every (expand, kernel) and (heads, mlp) pair.
        d = self.dims
        conv = [(e, k) for e in d.expands for k in d.kernels]
        vit = [[(h, r) for h in hs for r in d.mlp_ratios] for hs in d.vit_heads]
        n, full = max(len(conv), *map(len, vit)), max(d.depths)
        combos: list[tuple[int, ...]] = [(s,) for s in d.stem]
        for ws in d.widths:
            combos = [(*c, w) for c in combos for w in ws]
        cover = []
        for stem, *width in combos:
            for t in range(n):
                picks = [vit[s][t % len(vit[s])] for s in range(len(vit)) for _ in range(full)]
                cover.append(
                    self.config(
                        [full] * len(d.widths),
                        [r * width[d.n_conv + i // full] for i, (_, r) in enumerate(picks)],
                        width=width,
                        heads=[h for h, _ in picks],
                        expand=[conv[t % len(conv)][0]] * (d.n_conv * full),
                        kernel=[conv[t % len(conv)][1]] * (d.n_conv * full),
                        stem=stem,
                    )
                )
        return cover

    def build_block(self, key: BlockKey) -> tuple[nn.Module, torch.Tensor]:
        module, s = make_block(key), dict(key.shape)
        if key.kind == "stem":
            shape: tuple[int, ...] = (1, s["channels"], s["image"], s["image"])
        elif key.kind == "mbconv" or (key.kind == "vit_merge" and not s["from_tokens"]):
            shape = (1, s["cin"], s["size"], s["size"])
        elif key.kind == "vit_merge":
            shape = (1, s["size"] ** 2, s["cin"])
        else:
            shape = (1, s["tokens"], s["dim"])
        return module.eval(), torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def param_count(self, config: SubnetConfig) -> int:
        return sum(block_params(key) for key in self.blocks(config))

    def flops(self, config: SubnetConfig) -> int:
        """Multiply-accumulates of the extracted subnet at batch 1 (what complexity-aware sampling weighs)."""
        return sum(block_macs(key) for key in self.blocks(config))
