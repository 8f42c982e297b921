"""Day -> dusk adaptation on CamVid: source only, the oracle, and each workflow, over seeds. Cached, resumable.

    python scripts/adapt.py --config configs/adapt_camvid_dusk.yaml

Protocol (:class:`AdaptConfig` holds every setting):

1. Data (:func:`hf_reward.data.camvid.camvid_day_dusk`) at ``size``, in memory. Source: the day
   sequences' training frames, labelled. Target: the dusk sequence's training frames in alternating
   blocks, the pool (unlabelled, or labelled on request) and the evaluation part, which is reported.
2. The source model: a SegFormer pretrained by cross-entropy on the source alone (cached).
3. Workflows, each from the source model, for every seed:

   - ``oracle``: fine-tuned by cross-entropy on every pool image's labels, then calibrated on them;
   - ``em_priors``: the pool's class priors re-estimated by EM (:func:`hf_reward.adaptation.em_priors`),
     folded into the bias; no label;
   - ``calibration``: exact offsets (:func:`hf_reward.calibrate.fit_offsets`) fitted on
     ``budget * rounds`` pool images picked at random and labelled; no training;
   - ``self_training``: ``rounds`` rounds of class-balanced pseudo-labels on the pool (the most
     confident ``portion`` of each class's pixels), each followed by tuning on source + pool; no label;
   - ``active_<acquisition>_<objective>``: ``rounds`` rounds of asking labels for ``budget`` pool
     images chosen by the acquisition (``random``, ``entropy``, ``shortfall``: the model's expected
     mIoU shortfall from its own samples), each followed by tuning on source + labelled pool with the
     objective's RewardSegConfig fields; then calibration on the labelled images.

   In every tuning the target images are repeated to make about half of what is drawn.
4. Scores: the target evaluation part's mIoU, raw after every round and, where the workflow has
   labels, calibrated on them at the end. :func:`report` writes the table.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..adaptation import (
    class_balanced_thresholds,
    em_priors,
    expected_miou_shortfall,
    mean_entropy,
    mean_posteriors,
    pseudo_labels,
)
from ..calibrate import collect_logits, fold_offsets
from ..cli.evaluation import calibrate_model, evaluate
from ..cli.runs import pretrain, segmentation_trainer, settings_hash
from ..data import load_camvid
from ..data.camvid import DEFAULT_ROOT as CAMVID_PATH
from ..data.camvid import camvid_day_dusk, camvid_frames
from ..data.in_memory import InMemorySegmentation, materialise_split
from ..data.transforms import collate_segmentation
from ..decisions import upsample_logits
from ..modeling import build_model, load_segmentation_model, predict_batches
from .harness import STUDY_MODEL, checked_args, doc, file_hash, mean_sd, pretrain_config, quiet, study_args

ACQUISITIONS = ("random", "entropy", "shortfall")


@dataclass
class AdaptConfig:
    """a day -> dusk adaptation benchmark: data, source model, workflows, seeds"""

    output_dir: str = field(default="runs/adapt_camvid_dusk", metadata=doc("Where every stage is cached."))
    data_root: str = field(default=CAMVID_PATH, metadata=doc("CamVid's directory."))
    size: list[int] = field(default_factory=lambda: [128, 176], metadata=doc("Image size (height, width)."))
    block: int = field(default=8, metadata=doc("Consecutive dusk frames per block (pool and evaluation alternate)."))
    model: dict = field(
        default_factory=lambda: copy.deepcopy(STUDY_MODEL), metadata=doc("build_model's architecture and sizes.")
    )
    pretrain: dict = field(
        default_factory=lambda: {"max_steps": 1500, "learning_rate": 1e-3},
        metadata=doc("The source model's training."),
    )
    tune: dict = field(
        default_factory=lambda: {"max_steps": 100, "learning_rate": 1e-4, "lr_scheduler_type": "constant"},
        metadata=doc("RewardSegConfig fields of every tuning (each round of each workflow)."),
    )
    objectives: dict = field(
        default_factory=lambda: {"recipe": {}, "ce": {"reward_weight": 0.0, "ce_weight": 1.0}},
        metadata=doc("Active workflows' tuning objectives: RewardSegConfig fields (recipe: the library's defaults)."),
    )
    acquisitions: list[str] = field(
        default_factory=lambda: list(ACQUISITIONS),
        metadata=doc(f"Active workflows' acquisitions, of {ACQUISITIONS}."),
    )
    budget: int = field(default=4, metadata=doc("Pool images labelled per active round."))
    rounds: int = field(default=2, metadata=doc("Rounds of the active and self-training workflows."))
    portion: float = field(default=0.5, metadata=doc("Self-training: each class keeps its most confident portion."))
    shortfall_samples: int = field(default=8, metadata=doc("Masks sampled per image for the shortfall acquisition."))
    oracle_steps: int = field(default=200, metadata=doc("The oracle's fine-tuning steps on every pool label."))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata=doc("Seeds of every workflow."))

    def __post_init__(self):
        unknown = [a for a in self.acquisitions if a not in ACQUISITIONS]
        if unknown:
            raise ValueError(f"acquisitions must come from {ACQUISITIONS}, got {unknown}")
        if self.budget < 1 or self.rounds < 1 or not 0 < self.portion <= 1:
            raise ValueError(
                f"need budget >= 1, rounds >= 1, 0 < portion <= 1; got {self.budget}, {self.rounds}, {self.portion}"
            )
        # Every training's settings, checked before the source model trains.
        checked_args("pretrain", self.pretrain, lambda: pretrain_config("unused", self.pretrain))
        for name, fields in {"tune": {}, **self.objectives}.items():
            where = "tune" if name == "tune" else f"objective {name!r}"
            checked_args(where, {**self.tune, **fields}, lambda f=fields: study_args("unused", {**self.tune, **f}))

    def workflows(self) -> list[str]:
        active = [f"active_{a}_{o}" for a in self.acquisitions for o in self.objectives]
        return ["source", "oracle", "em_priors", "calibration", "self_training", *active]


class Domains:
    """The source, pool and evaluation rows of CamVid's training frames, in memory at ``cfg.size``."""

    def __init__(self, cfg: AdaptConfig):
        self.images, self.labels, self.id2label = materialise_split(
            Path(cfg.output_dir) / "train.safetensors",
            load_camvid,
            "train",
            cfg.size,
            root=cfg.data_root,
            streaming=False,
        )
        row = {name: i for i, name in enumerate(camvid_frames("train", cfg.data_root))}
        parts = camvid_day_dusk(cfg.data_root, cfg.block)
        self.source, self.pool, self.eval = (
            [row[f] for f in parts[p]] for p in ("source", "target_pool", "target_eval")
        )

    def dataset(self, rows, labels=None, *, flip: bool = False, seed: int = 0) -> InMemorySegmentation:
        return InMemorySegmentation(
            self.images, self.labels if labels is None else labels, indices=rows, flip=flip, seed=seed
        )

    def loader(self, rows) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.dataset(rows), batch_size=16, collate_fn=collate_segmentation)

    def mixed(self, target_rows, labels=None, seed: int = 0) -> InMemorySegmentation:
        """Source and ``target_rows``, the latter repeated to make about half of the rows."""
        repeats = max(1, round(len(self.source) / len(target_rows)))
        return self.dataset(self.source + list(target_rows) * repeats, labels, flip=True, seed=seed)


def source_model(cfg: AdaptConfig, domains: Domains) -> Path:
    """The source model's directory: pretrained by cross-entropy on the source (cached on its settings)."""
    args = pretrain_config(Path(cfg.output_dir) / "source", cfg.pretrain)

    def make():
        model = build_model(domains.id2label, **cfg.model)
        evals = {"target_eval": domains.dataset(domains.eval)}
        return model, domains.dataset(domains.source, flip=True), evals, domains.id2label

    data = {"camvid": str(Path(cfg.data_root).resolve()), "size": list(cfg.size), "block": cfg.block, "part": "source"}
    return pretrain(args, {"model": cfg.model, "data": data}, make)


@torch.no_grad()
def pool_logits(model, domains: Domains, rows) -> torch.Tensor:
    """The model's logits ``(N, C, H, W)`` on ``rows``, upsampled to the labels' size."""
    size = tuple(domains.labels.shape[-2:])
    batches = predict_batches(model, domains.loader(rows), progress=False)
    return torch.cat([upsample_logits(logits, size).cpu() for logits, _ in batches])


def _score(model, domains: Domains) -> float:
    metric = evaluate(model, domains.dataset(domains.eval), domains.id2label, batch_size=16, progress=False)
    return float(metric.compute()["mean_iou"])


def _calibrated_score(model, domains: Domains, rows) -> float:
    model = copy.deepcopy(model)
    calibrate_model(model, domains.dataset(rows), "miou", split="target pool", batch_size=16, progress=False)
    return _score(model, domains)


def _tune(cfg: AdaptConfig, model, train, fields: dict, seed: int, out: Path) -> None:
    args = study_args(out, {**cfg.tune, **fields}, seed=seed, eval_strategy="no", batch_eval_metrics=False)
    quiet(segmentation_trainer(model, args, train, None, model.config.id2label)).train()


def run_workflow(cfg: AdaptConfig, workflow: str, seed: int, domains: Domains, start: Path, out: Path) -> dict:
    """One workflow from the source model at ``start``: ``{"labels", "rounds", "raw", "calibrated"}``."""
    model = load_segmentation_model(str(start), domains.id2label)
    rounds, labelled, calibrated = [], [], None
    generator = torch.Generator().manual_seed(seed)
    if workflow == "oracle":
        labelled = list(domains.pool)
        fields = {"reward_weight": 0.0, "ce_weight": 1.0, "max_steps": cfg.oracle_steps}
        _tune(cfg, model, domains.mixed(labelled, seed=seed), fields, seed, out)
        rounds.append(_score(model, domains))
    elif workflow == "em_priors":
        source_logits = collect_logits(model, domains.loader(domains.source), progress=False)
        pool = collect_logits(model, domains.loader(domains.pool), progress=False)
        _, offsets = em_priors(pool, mean_posteriors(source_logits))
        fold_offsets(model, offsets, split="target pool", method="EM re-estimation of the class priors")
        rounds.append(_score(model, domains))
    elif workflow == "calibration":
        picks = torch.randperm(len(domains.pool), generator=generator)[: cfg.budget * cfg.rounds]
        labelled = [domains.pool[i] for i in picks]
    elif workflow == "self_training":
        for r in range(cfg.rounds):
            logits = pool_logits(model, domains, domains.pool)
            pseudo = domains.labels.clone()
            pseudo[domains.pool] = pseudo_labels(logits, class_balanced_thresholds(logits, cfg.portion)).to(
                pseudo.dtype
            )
            _tune(cfg, model, domains.mixed(domains.pool, pseudo, seed=seed + r), {}, seed + r, out)
            rounds.append(_score(model, domains))
    elif workflow.startswith("active_"):
        acquisition, objective = workflow.removeprefix("active_").split("_", 1)
        for r in range(cfg.rounds):
            candidates = [row for row in domains.pool if row not in labelled]
            if acquisition == "random":
                scores = torch.rand(len(candidates), generator=generator)
            else:
                logits = pool_logits(model, domains, candidates)
                scores = (
                    mean_entropy(logits)
                    if acquisition == "entropy"
                    else expected_miou_shortfall(logits, num_samples=cfg.shortfall_samples, generator=generator)
                )
            labelled += [candidates[i] for i in scores.topk(min(cfg.budget, len(candidates))).indices.tolist()]
            _tune(cfg, model, domains.mixed(labelled, seed=seed + r), cfg.objectives[objective], seed + r, out)
            rounds.append(_score(model, domains))
    elif workflow != "source":
        raise ValueError(f"unknown workflow {workflow!r}; the config has {cfg.workflows()}")
    raw = rounds[-1] if rounds else _score(model, domains)
    if labelled:
        calibrated = _calibrated_score(model, domains, labelled)
    return {"labels": len(labelled), "rounds": rounds, "raw": raw, "calibrated": calibrated}


def run_all(cfg: AdaptConfig, workflows: list[str] | None = None, seeds: list[int] | None = None) -> list[dict]:
    """Every workflow x seed, each cached as ``runs/<workflow>_seed<seed>-<hash>.json``; the records."""
    domains = Domains(cfg)
    start = source_model(cfg, domains)
    key = settings_hash(
        {"config": asdict(cfg) | {"output_dir": None, "seeds": None}, "start": file_hash(start / "model.safetensors")}
    )
    records = []
    for workflow in workflows or cfg.workflows():
        for seed in [0] if workflow in ("source", "em_priors") else (seeds or cfg.seeds):
            path = Path(cfg.output_dir) / "runs" / f"{workflow}_seed{seed}-{key}.json"
            if not path.is_file():
                started = time.perf_counter()
                record = run_workflow(cfg, workflow, seed, domains, start, Path(cfg.output_dir) / "trainer")
                record.update(workflow=workflow, seed=seed, seconds=time.perf_counter() - started)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=1))
                print(
                    f"{workflow} seed {seed}: raw {record['raw']:.4f}, calibrated {record['calibrated']}", flush=True
                )
            records.append(json.loads(path.read_text()))
    return records


def report(records: list[dict]) -> str:
    """The markdown table: target mIoU (%) per workflow, and the share of the source -> oracle gap each recovers."""
    by = {}
    for r in records:
        by.setdefault(r["workflow"], []).append(r)
    source = statistics.mean(r["raw"] for r in by["source"])
    oracle = statistics.mean(r["calibrated"] for r in by["oracle"]) if "oracle" in by else None
    lines = [
        "| workflow | target labels | rounds (raw mIoU) | raw | calibrated | gap recovered | per label |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, runs in by.items():
        best = [r["calibrated"] if r["calibrated"] is not None else r["raw"] for r in runs]
        labels = runs[0]["labels"]
        gap = (statistics.mean(best) - source) / (oracle - source) if oracle and oracle != source else None
        rounds = " -> ".join(mean_sd([r["rounds"][i] for r in runs]) for i in range(len(runs[0]["rounds"])))
        calibrated = mean_sd([r["calibrated"] for r in runs]) if runs[0]["calibrated"] is not None else ""
        recovered = "" if gap is None else f"{100 * gap:.0f}%"
        per_label = "" if gap is None or not labels else f"{100 * gap / labels:.1f}%"
        raw = mean_sd([r["raw"] for r in runs])
        lines.append(f"| {name} | {labels} | {rounds} | {raw} | {calibrated} | {recovered} | {per_label} |")
    return "\n".join(lines)
