"""`auto` settings, chosen by measurement on the machine at hand: precision, memory format, fast path, workers.

Which settings train fastest depends on the machine, not on the code: bf16 autocast is 1.4x faster than float32
for Shallow SqueezeNext-06-0.4x on a CPU with AVX-512 BF16 or AMX, and 3x slower for 06-0.9x on an AMD Zen 3,
which has neither; channels_last helps wide convolutions and hurts the 8-64-channel BatchNorms of this design
space; two one-thread workers beat one two-thread worker on a loaded 2-core machine and can lose on a quiet one.
So `trainer.precision=auto`, `trainer.channels_last=auto`, `trainer.fast_path=auto` and `workers=auto` are decided
by a short probe on this machine (dse.probe: the real `fit`, two tiny epochs on random pixels, in child
processes), side by side:

* per *cost class* (MACs per image in factors of 4: 0.25-1 M, 1-4 M, 4-16 M, ...), on the class's cheapest
  architecture of the study, the candidate settings the request leaves open: float32 / bf16 x NCHW /
  channels_last, and on CUDA the whole step as a CUDA graph or eager, one dimension at a time (Chain).
  torch.compile is never a candidate: its compilation (about a minute per architecture on a GPU) costs more
  than the probe may; ask for it by name.
  The baseline (float32, NCHW) is timed first; a later candidate whose warm-up epoch is ABANDON_RATIO times
  slower is not timed further.
* The fastest candidate that is numerically safe wins, and bf16 wins
  only when it is BF16_MARGIN faster than the best float32 setting (it rounds activations to 8 bits of
  mantissa: a tie goes to float32). Measured on 2-core AMD EPYCs with PyTorch 2.14.1 (one thread per process,
  two side by side): without native bf16 (Zen 3) bf16 was at best 1.05x float32 (the narrowest network) and
  0.3-0.8x for the rest; with it (Zen 5, avx512_bf16) 1.14-1.5x. A 10 % margin keeps float32 on the first and
  takes bf16 on the second (a 25 % margin left up to 20 % of the speed there: auto vs best 0.91x).
* A close call is settled per architecture: when a class's runner-up trained at least 1/CLOSE_RATIO of its
  choice's images per second, every architecture of the class trains both, one right after the other (at once
  on two processes), and keeps the faster by the same rule (Tuner.refine; cached). One sequential probe of the
  cheapest member cannot settle it: on a shared 2-core host the same setting was timed 1.3-1.5x apart minutes
  later, and the class's wider members preferred channels_last where its cheapest did not (Zen 5: 0.83-0.85x
  of their best). Both runs are the architecture's calibrations, so the estimate does not pay for them again.
* Safe per architecture: PyTorch 2.14.1's float32 channels_last training of the two narrowest Shallow
  SqueezeNexts crashes the process on one AMD Zen 3 (`free(): invalid next size`) and is 1.2-1.4x faster than
  NCHW for the wider ones there. So every architecture's first run with its class's choice is its calibration,
  in a probe process (Tuner.calibrate_all: also when study.estimate=false); a setting that crashes it (SIGSEGV,
  SIGABRT, ...) is recorded as unsafe for that architecture on this machine, and that architecture alone gets
  its class's next fastest measured setting (decided) before any trial trains it.
* workers x threads (CPU): the study's typical architecture (nearest the geometric mean of its MACs) is
  trained by 1, 2, ... cores processes side by side with cores // workers threads each; the most images per
  second in all wins. On CUDA: one worker per
  visible GPU (not measured here; several per GPU need MPS and a memory cap, see the README).

Decisions are cached as JSON under <DSE_CACHE_DIR or ~/.cache/dse>/autotune, keyed by the device (CPU model and
core count, or GPU name), PyTorch version, cost class, batch size, threads per worker and the request, and
logged in one line when made. The calibrations they measured are the study estimate's (dse.calibrate), so the
probe is not paid twice. Trials record the settings that ran (precision, memory format, fast path, threads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dse import calibrate as cal
from dse import common
from dse.common import atomic_write
from dse.fastpath import graph_blocker
from dse.models import ModelSpec, model_facts
from dse.probe import Job, ProbePool
from dse.train import OptimConfig, TrainConfig, resolve_device

log = logging.getLogger(__name__)

VERSION = 1
BF16_MARGIN = 1.10  # bf16 must train >= 10 % more images per second than the best float32 setting
ABANDON_RATIO = 1.25  # a candidate whose warm-up epoch is 1.25x the first candidate's is not timed further
CLOSE_RATIO = 1.3  # a class's runner-up within 1.3x of its choice: each architecture times both, side by side
SAFE = ("fp32", False, "eager")  # what runs when nothing could be measured: float32, NCHW, eager
CRASH_SIGNALS = {int(signal.SIGSEGV), int(signal.SIGABRT), int(signal.SIGBUS), int(signal.SIGILL), int(signal.SIGFPE)}


@dataclass(frozen=True)
class Setting:
    """One candidate: precision, memory format and fast path."""

    precision: str
    channels_last: bool
    fast_path: str

    def label(self) -> str:
        return f"{self.precision} {'channels_last' if self.channels_last else 'nchw'} {self.fast_path}"

    def apply(self, train: TrainConfig) -> TrainConfig:
        return replace(train, precision=self.precision, channels_last=self.channels_last, fast_path=self.fast_path)


@dataclass(frozen=True)
class Item:
    """One architecture to run with one request: the model, its optimizer and trainer config (threads set)."""

    spec: ModelSpec
    optim: OptimConfig
    train: TrainConfig

    @property
    def macs(self) -> int:
        return model_facts(self.spec).macs


def is_auto(train: TrainConfig) -> bool:
    """Whether `train` leaves precision or memory format to the probe (fast_path=auto alone is the rule of
    dse.fastpath.choose unless a probe runs anyway)."""
    return train.precision == "auto" or train.channels_last == "auto"


def cost_class(macs: int) -> int:
    """Factor-of-4 MAC buckets: 0 = 1-4 M MACs per image, -1 = 0.25-1 M, 1 = 4-16 M ... (the fastest setting
    changes with a network's width: neighbours in MACs share it)."""
    return max(-4, math.floor(math.log(max(macs, 1) / 1e6, 4)))


def class_label(c: int) -> str:
    return f"{4.0 ** c:g}-{4.0 ** (c + 1):g} M MACs"


def candidates(train: TrainConfig, optim: OptimConfig, device: torch.device) -> list[Setting]:
    """The settings the request leaves open on `device`, the safe baseline first."""
    if train.precision == "auto":
        precisions = ["fp32", "bf16"]
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            precisions = ["fp32"]
    else:
        precisions = [train.precision]
    layouts = [False, True] if train.channels_last == "auto" else [bool(train.channels_last)]
    paths = [train.fast_path]
    if train.fast_path == "auto":
        paths = ["eager"]
        if device.type == "cuda":
            paths = ["graph", "eager"]
    out = []
    for p in precisions:
        for cl in layouts:
            for fp in paths:
                if fp == "graph" and graph_blocker(optim.name, optim.schedule, optim.momentum, p):
                    continue  # dse.fastpath would train it eagerly anyway: the eager candidate covers it
                out.append(Setting(p, cl, fp))
    return out


def choose(measured: dict[Setting, dict[str, Any]], unsafe: set[str]) -> Setting:
    """The fastest safe setting among probe results; bf16 only with BF16_MARGIN over float32."""
    ok = {s: r["train_img_per_s"] for s, r in measured.items() if r.get("ok") and s.label() not in unsafe}
    if not ok:
        return Setting(*SAFE)
    best32 = max((s for s in ok if s.precision == "fp32"), key=ok.get, default=None)
    other = max((s for s in ok if s.precision != "fp32"), key=ok.get, default=None)
    if other is not None and (best32 is None or ok[other] >= BF16_MARGIN * ok[best32]):
        return other
    return best32


# -------------------------------------------------------------------------------------------- the cache on disk
def cache_root() -> Path:
    return common.cache_root() / "autotune"


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _threads(train: TrainConfig) -> int:
    return int(train.threads or torch.get_num_threads())


def decision_key(item: Item) -> dict[str, Any]:
    """What a decision depends on: machine, PyTorch, cost class, batch, threads, the request (and on CUDA,
    whether the optimizer can be captured)."""
    device = resolve_device(item.train.device)
    t = item.train
    key = {"version": VERSION, "device": cal.device_name(device), "torch": str(torch.__version__),
           "cost_class": cost_class(item.macs), "batch_size": t.batch_size, "threads": _threads(t),
           "requested": [t.precision, t.channels_last, t.fast_path]}
    if device.type == "cuda":
        key["graph_blocker"] = graph_blocker(item.optim.name, item.optim.schedule, item.optim.momentum, "fp32")
    return key


def arch_key(item: Item) -> dict[str, Any]:
    """The key of one architecture's own decision within its class (see Tuner.refine)."""
    return decision_key(item) | {"architecture": arch_id(item.spec)}


def close_pair(item: Item) -> tuple[Setting, Setting] | None:
    """(the class's choice for `item`, the class's runner-up) when the runner-up trained at least 1/CLOSE_RATIO
    of the choice's images per second in the class probe and `item` has no decision of its own yet; else None.
    One sequential probe of the class's cheapest architecture cannot tell such settings apart on a shared host
    (the same setting timed 1.3-1.5x apart minutes later), nor say which the class's wider members prefer."""
    d = _load(decision_key(item))
    if _choice(d) is None or _load(arch_key(item)) is not None:
        return None
    choice, rates, unsafe = decided(item), _rates(d), unsafe_settings(item)
    rest = {s: r for s, r in rates.items() if s != choice and s.label() not in unsafe}
    runner = choose(rest, set()) if rest else None
    if runner is None or choice not in rates or runner not in rates:
        return None
    if rates[runner]["train_img_per_s"] * CLOSE_RATIO < rates[choice]["train_img_per_s"]:
        return None
    return choice, runner


def _rates(d: dict[str, Any] | None) -> dict[Setting, dict[str, Any]]:
    """A decision file's measured img/s as probe results ({setting: {"ok", "train_img_per_s"}})."""
    try:
        return {Setting(**s): {"ok": True, "train_img_per_s": r} for s, r in (d or {}).get("measured", [])}
    except (TypeError, ValueError):
        return {}


def arch_id(spec: ModelSpec) -> str:
    """An architecture's identity for the crash record (its whole spec: the shapes that crashed)."""
    return _digest(spec.to_dict())


def _unsafe_path(train: TrainConfig) -> Path:
    device = resolve_device(train.device)
    who = {"version": 2, "device": cal.device_name(device), "torch": str(torch.__version__),
           "threads": _threads(train)}
    return cache_root() / f"unsafe-{_digest(who)}.json"


def _crashes(train: TrainConfig) -> dict[str, dict[str, str]]:
    """{setting label: {architecture id: display name}} of the probes that crashed on this machine."""
    try:
        d = json.loads(_unsafe_path(train).read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def unsafe_settings(item: Item) -> set[str]:
    """Settings that crashed a probe process training `item`'s architecture here (with this many threads)."""
    me = arch_id(item.spec)
    return {label for label, archs in _crashes(item.train).items() if me in archs}


def mark_unsafe(item: Item, label: str) -> None:
    d = _crashes(item.train)
    d.setdefault(label, {})[arch_id(item.spec)] = item.spec.display_name
    atomic_write(_unsafe_path(item.train), json.dumps(d, indent=1, sort_keys=True))


def _load(key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        d = json.loads((cache_root() / f"{_digest(key)}.json").read_text())
        return d if d["key"] == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _choice(d: dict[str, Any] | None) -> Setting | None:
    try:
        return Setting(**d["choice"]) if d else None
    except (KeyError, TypeError):
        return None


def load_decision(key: dict[str, Any]) -> Setting | None:
    """A cost class's cached decision (None: not decided on this machine yet)."""
    return _choice(_load(key))


def decided(item: Item) -> Setting | None:
    """The setting `item` trains with: its cost class's decision, unless that crashed this architecture here;
    then the class's next fastest measured setting by the same rule (choose), else SAFE. None: undecided."""
    d = _load(decision_key(item))  # one read of the decision file: its choice and its measured rates
    choice = _choice(d)
    if choice is None:
        return None
    unsafe = unsafe_settings(item)
    own = _choice(_load(arch_key(item)))  # this architecture's own pairwise check (a close class), if any
    if own is not None and own.label() not in unsafe:
        return own
    if choice.label() not in unsafe:
        return choice
    return choose(_rates(d), unsafe)


def save_decision(key: dict[str, Any], choice: Setting, rep: ModelSpec, line: str,
                  measured: dict[Setting, dict[str, Any]] | None = None) -> None:
    """The class's choice and every setting's measured img/s (the fallbacks of `decided`)."""
    rates = [[asdict(s), r["train_img_per_s"]] for s, r in (measured or {}).items() if r.get("ok")]
    d = {"key": key, "choice": asdict(choice), "measured": rates, "representative": rep.name, "line": line,
         "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write(cache_root() / f"{_digest(key)}.json", json.dumps(d, indent=1))


# ------------------------------------------------------------------------------------------------ measuring
def job_for(item: Item, setting: Setting | None = None, abandon_after_s: float | None = None) -> Job:
    train = setting.apply(item.train) if setting else item.train
    device = resolve_device(train.device)
    key = cal.calibration_key(item.spec, train, item.optim)
    return Job(key=json.dumps(key, sort_keys=True), spec=item.spec.to_dict(), train=_train_dict(train),
               optim=item.optim.to_dict(), steps=cal.default_steps(device), abandon_after_s=abandon_after_s)


def _train_dict(train: TrainConfig) -> dict[str, Any]:
    d = train.to_dict()
    d.update(checkpoint_dir=None, tensorboard_dir=None, progress="none")
    return d


def _calibration(job: Job, result: dict[str, Any]) -> cal.Calibration | None:
    """A successful probe result as a calibration (saved to the estimate's cache), else None."""
    if not result.get("ok"):
        return None
    c = cal.from_measurement(result, json.loads(job.key))
    cal.save(c)
    return c


class Chain:
    """The probes of one cost class, one dimension at a time: the baseline (float32, NCHW, and on CUDA the graph
    when it can run), then the other precision at the baseline's layout, then the other memory format at the
    better precision, then the other fast path at the better of those. Each later probe is abandoned when its
    warm-up epoch takes ABANDON_RATIO times the baseline's. Three or four probes instead of every combination,
    and the slow ones cut short: most of the probe's time is the slow candidates."""

    def __init__(self, item: Item, cands: list[Setting]) -> None:
        self.item, self.cands = item, cands
        self.measured: dict[Setting, dict[str, Any]] = {}
        self.running: set[Setting] = set()

    def done(self, setting: Setting, result: dict[str, Any]) -> None:
        self.running.discard(setting)
        self.measured[setting] = result

    def best(self) -> Setting:
        return choose(self.measured, set()) if self.measured else self.cands[0]

    def ready(self) -> list[tuple[Setting, float | None]]:
        """The next probe to run ([] while one runs or when the chain is complete)."""
        if self.running or not self.cands:
            return []
        base = self.cands[0]
        if base not in self.measured:
            return self._start(base, None)
        r = self.measured[base]
        limit = ABANDON_RATIO * r["warmup_epoch_seconds"] if r.get("ok") and r.get("warmup_epoch_seconds") else None
        best = self.best()
        for field in ("precision", "channels_last", "fast_path"):
            for s in self.cands:
                if s not in self.measured and _differs_only_in(s, best, field):
                    return self._start(s, limit)
        return []

    def _start(self, s: Setting, limit: float | None) -> list[tuple[Setting, float | None]]:
        self.running.add(s)
        return [(s, limit)]


def _differs_only_in(a: Setting, b: Setting, field: str) -> bool:
    return getattr(a, field) != getattr(b, field) and all(
        getattr(a, f) == getattr(b, f) for f in ("precision", "channels_last", "fast_path") if f != field)


def probed(item: Item, setting: Setting, job: Job, result: dict[str, Any]) -> dict[str, Any]:
    """A probe's `result`, after its consequences: a crash (not a kill from outside: SIGKILL, SIGTERM) marks
    `setting` unsafe for `item`'s architecture, a measurement is saved as its calibration."""
    if result.get("signal") in CRASH_SIGNALS:
        mark_unsafe(item, setting.label())
    _calibration(job, result)
    return result


def settle(key: str, item: Item, measured: dict[Setting, dict[str, Any]], say: Callable[[str], None],
           alone: bool = False) -> Setting:
    """Decide from `measured` (the settings that crashed `item` excluded), save it under `key` (a class's
    decision, or with `alone` the architecture's own) and say it in one line."""
    unsafe = unsafe_settings(item)
    choice = choose(measured, unsafe)
    line = decision_line(item, choice, measured, unsafe, alone)
    save_decision(json.loads(key), choice, item.spec, line, measured)
    say(line)
    return choice


class Tuner:
    """Decides `auto` settings for many architectures at once with a pool of probe processes, and calibrates
    every architecture for the study estimate with the settings it will run. `say` prints progress lines."""

    def __init__(self, processes: int, threads: int, say: Callable[[str], None] = log.info) -> None:
        self.processes, self.threads, self.say = processes, threads, say
        self._pool: ProbePool | None = None

    @property
    def pool(self) -> ProbePool:
        if self._pool is None:
            self._pool = ProbePool(self.processes, self.threads)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def resolve_all(self, items: Sequence[Item]) -> dict[Item, TrainConfig]:
        """Concrete trainer settings for every item (probing the cost classes not decided yet)."""
        groups: dict[str, list[Item]] = {}
        for it in items:
            if is_auto(it.train):
                groups.setdefault(json.dumps(decision_key(it), sort_keys=True), []).append(it)
        reps = {k: min(g, key=lambda i: i.macs) for k, g in groups.items()}
        todo = {k: rep for k, rep in reps.items() if load_decision(json.loads(k)) is None}
        if todo:
            self._decide(todo)
        self.refine([it for it in items if is_auto(it.train)])
        return {it: finalize(it, decided(it) if is_auto(it.train) else None) for it in items}

    def refine(self, items: Sequence[Item]) -> None:
        """Every architecture of a close class (close_pair) trains its class's choice and runner-up side by side,
        one right after the other on one process, at once on two; the faster by the same rule (choose) becomes
        its own decision (cached). Both runs are calibrations: the estimate does not pay for them again."""
        pairs: dict[str, tuple[Item, tuple[Setting, Setting]]] = {}
        for it in items:
            pair = close_pair(it)
            if pair is not None:
                pairs.setdefault(json.dumps(arch_key(it), sort_keys=True), (it, pair))
        if not pairs:
            return
        jobs, back, measured = [], {}, {k: {} for k in pairs}
        for k, (it, pair) in pairs.items():
            for s in pair:
                jobs.append(job_for(it, s))
                back[jobs[-1].key] = (k, s)

        def on_result(job: Job, result: dict[str, Any]) -> None:
            k, s = back[job.key]
            measured[k][s] = probed(pairs[k][0], s, job, result)

        self.say(f"timing each class's two best settings side by side for {len(pairs)} architecture"
                 f"{'s' * (len(pairs) != 1)} (their class probe was a close call: within {CLOSE_RATIO}x)")
        self.pool.run(jobs, on_result)
        for k, (it, _) in pairs.items():
            settle(k, it, measured[k], self.say, alone=True)

    def _decide(self, reps: dict[str, Item]) -> None:
        """Probe the cost classes in `reps` side by side on the pool, each class as a chain (Chain), then decide
        and log one line per class."""
        device = resolve_device(next(iter(reps.values())).train.device)
        chains = {k: Chain(it, candidates(it.train, it.optim, device)) for k, it in reps.items()}
        jobs: dict[str, tuple[Chain, Setting]] = {}

        def next_job() -> Job | None:
            for chain in chains.values():
                for setting, limit in chain.ready():
                    job = job_for(chain.item, setting, limit)
                    hit = cal.load_cached(json.loads(job.key))
                    if hit is not None:  # measured before (e.g. by the workers probe)
                        chain.done(setting, {"ok": True, "train_img_per_s": hit.train_img_per_s,
                                             "warmup_epoch_seconds": hit.warmup_epoch_seconds})
                        continue
                    jobs[job.key] = (chain, setting)
                    return job
            return None

        def on_result(job: Job, result: dict[str, Any]) -> None:
            chain, setting = jobs[job.key]
            chain.done(setting, probed(chain.item, setting, job, result))

        self.pool.run(next_job, on_result)
        for k, chain in chains.items():
            settle(k, chain.item, chain.measured, self.say)

    def calibrate_all(self, resolved: dict[Item, TrainConfig], verb: str = "calibrated"
                      ) -> dict[Item, cal.Calibration]:
        """A calibration for every item with its resolved settings: cached ones read, the rest measured side by
        side on the pool, longest first, one line per architecture as each finishes. It is also each
        architecture's first run with its class's choice: a setting that crashes it is marked unsafe for it,
        `resolved[item]` becomes its next choice (decided) and that is measured instead (same line)."""
        out: dict[Item, cal.Calibration] = {}
        back: dict[str, list[Item]] = {}
        queue: list[Job] = []
        count = [0, 0]  # measured, queued

        def enqueue(its: Iterable[Item]) -> None:
            for it in sorted(its, key=lambda i: -i.macs):  # longest first: packs best
                job = job_for(Item(it.spec, it.optim, resolved[it]))
                hit = cal.load_cached(json.loads(job.key))
                if hit is not None:
                    out[it] = hit
                elif job.key in back:
                    back[job.key].append(it)
                else:
                    back[job.key] = [it]
                    queue.append(job)
                    count[1] += 1

        def line(job: Job, result: dict[str, Any]) -> None:
            its, c = back.pop(job.key), _calibration(job, result)
            retry = fall_back(its, resolved, job) if result.get("signal") in CRASH_SIGNALS else []
            if retry:
                self.say(f"{its[0].spec.display_name}: {setting_of(job.train).label()} crashed its probe "
                         f"({result.get('error')}); it trains with {setting_of(resolved[retry[0]]).label()} here "
                         "instead (cached)")
                count[1] -= 1  # measured again under its next setting: one line for the architecture
                enqueue(retry)
                return
            count[0] += 1
            what = (f"{c.train_img_per_s:,.0f} img/s training, {c.eval_img_per_s:,.0f} evaluating" if c else
                    f"not measured ({result.get('error')})")
            self.say(f"{verb} {count[0]}/{count[1]}: {its[0].spec.display_name}: {what}")
            out.update({it: c for it in its if c is not None})

        enqueue(resolved)
        if queue:
            self.say(f"{'calibrating' if verb == 'calibrated' else 'checking'} {len(queue)} architecture"
                     f"{'s' * (len(queue) != 1)} on {self.processes} process{'es' * (self.processes != 1)} x "
                     f"{self.threads} thread{'s' * (self.threads != 1)} (cached per machine)")
            self.pool.run(lambda: queue.pop(0) if queue else None, on_result=line)
        return out

    def check_all(self, resolved: dict[Item, TrainConfig]) -> None:
        """Run every architecture whose choice is not SAFE and never ran here once in a probe process (its
        calibration): a setting that crashes it is replaced in `resolved` (calibrate_all)."""
        todo = unchecked(resolved)
        self.calibrate_all(todo, verb="checked")
        resolved.update(todo)


def fall_back(its: list[Item], resolved: dict[Item, TrainConfig], job: Job) -> list[Item]:
    """After `job` crashed: mark its setting unsafe for the architecture and give `its` their next choice in
    `resolved`; the items to measure again ([] when nothing else can be chosen: explicit settings, or SAFE
    itself crashed)."""
    crashed = setting_of(job.train)
    retry = []
    for it in its:
        if is_auto(it.train):
            mark_unsafe(it, crashed.label())
            resolved[it] = finalize(it, decided(it))
            if setting_of(resolved[it]) != crashed:
                retry.append(it)
    return retry


def setting_of(train: TrainConfig | dict[str, Any]) -> Setting:
    """The setting a concrete trainer config (or a probe job's dict of it) trains with."""
    t = train if isinstance(train, dict) else train.to_dict()
    return Setting(t["precision"], bool(t["channels_last"]), t["fast_path"])


def finalize(item: Item, choice: Setting | None) -> TrainConfig:
    """`item.train` with the decided setting in place of "auto" (fields given explicitly are kept)."""
    t = item.train
    if choice is None:
        return t
    return replace(t, precision=choice.precision if t.precision == "auto" else t.precision,
                   channels_last=choice.channels_last if t.channels_last == "auto" else t.channels_last,
                   fast_path=choice.fast_path if t.fast_path == "auto" else t.fast_path)


def decision_line(item: Item, choice: Setting, measured: dict[Setting, dict], unsafe: set[str],
                  alone: bool = False) -> str:
    """One line: what was decided for `item`'s class (or for its architecture `alone`), every measured rate."""
    parts = []
    for s, r in measured.items():
        if r.get("ok") and s.label() in unsafe:
            parts.append(f"{s.label()} {r['train_img_per_s']:,.0f} img/s but unsafe (it crashed this architecture "
                         "here before)")
        elif r.get("ok"):
            parts.append(f"{s.label()} {r['train_img_per_s']:,.0f} img/s")
        elif r.get("signal") in CRASH_SIGNALS:
            parts.append(f"{s.label()} unsafe ({r.get('error')})")
        elif s.label() in unsafe:
            parts.append(f"{s.label()} unsafe (it crashed this architecture here before)")
        else:
            parts.append(f"{s.label()} {r.get('error', 'failed')}")
    device = resolve_device(item.train.device)
    name, cls = item.spec.display_name, class_label(cost_class(item.macs))
    return (f"auto settings for {f'{name} alone ({cls}' if alone else f'{cls} ({name}'}, "
            f"{_threads(item.train)} thread{'s' * (_threads(item.train) != 1)}, {cal.device_name(device)}): "
            f"{choice.label()}; measured side by side: {'; '.join(parts)}")


_SAID: set[str] = set()


def resolve(spec: ModelSpec, optim: OptimConfig, train: TrainConfig) -> TrainConfig:
    """`train` with its `auto` fields decided for `spec` on this machine: from the cache, else probed now
    (one probe process with this trial's threads), and the architecture's first run with the choice checked
    in a probe process (Tuner.calibrate_all; cached). What `fit` needs before it runs."""
    if not is_auto(train):
        return train
    train = replace(train, threads=_threads(train))
    item = Item(spec, optim, train)
    choice = decided(item)
    unsure = choice is None or close_pair(item) is not None  # undecided, or a close class not checked for it
    if unsure or (choice != Setting(*SAFE) and not is_checked(item, choice)):
        tuner = Tuner(1, _threads(train))
        try:
            resolved = tuner.resolve_all([item])
            tuner.check_all(resolved)
            return resolved[item]
        except Exception as e:  # noqa: BLE001 - no probe process here (e.g. no fork): the safe setting trains
            log.warning("auto settings could not be measured (%s); training %s", str(e).strip()[:200],
                        Setting(*SAFE).label())
            return finalize(item, Setting(*SAFE))
        finally:
            tuner.close()
    digest = _digest(decision_key(item))
    if digest not in _SAID:
        _SAID.add(digest)
        log.info("auto settings for %s (cached for this machine): %s", class_label(cost_class(item.macs)),
                 choice.label())
    return finalize(item, choice)


def is_checked(item: Item, choice: Setting) -> bool:
    """Whether `item` has trained with `choice` in a probe process here (its calibration is cached)."""
    train = finalize(item, choice)
    return cal.load_cached(cal.calibration_key(item.spec, train, item.optim)) is not None


def unchecked(resolved: dict[Item, TrainConfig]) -> dict[Item, TrainConfig]:
    """The items whose auto settings chose something other than SAFE and never ran here in a probe process."""
    return {it: t for it, t in resolved.items()
            if is_auto(it.train) and setting_of(t) != Setting(*SAFE) and not is_checked(it, setting_of(t))}


# ------------------------------------------------------------------------------------------ workers x threads
def worker_candidates(cores: int) -> list[tuple[int, int]]:
    """(workers, threads each) pairs that fill the cores: 1 x cores, 2 x cores/2, ..., cores x 1 (at most 4)."""
    ws = sorted({1, 2, max(1, cores // 2), cores} & set(range(1, cores + 1)))
    return [(w, cores // w) for w in ws]


def choose_workers(items: Sequence[Item], cores: int, say: Callable[[str], None] = log.info
                   ) -> tuple[int, int, Tuner | None]:
    """(workers, threads per worker, the probe pool to reuse) for a CPU study of `items`: the study's typical
    architecture (nearest the geometric mean of its MACs) trained by every candidate number of processes side by
    side; the most images per second in all wins. All candidate pools start at once (their imports overlap)
    and are timed one after another."""
    cands = worker_candidates(cores)
    if len(cands) == 1 or not items:
        return cands[-1][0], cands[-1][1], None
    rep = typical(items)
    probes, keys, rates, tuners = {}, {}, {}, {}
    for w, t in cands:
        train = replace(rep.train, threads=t)
        probes[w] = Item(rep.spec, rep.optim, finalize(Item(rep.spec, rep.optim, train),
                                                       Setting(*SAFE) if is_auto(train) else None))
        keys[w] = {"version": VERSION, "kind": "workers", "workers": w,
                   "calibration": cal.calibration_key(probes[w].spec, probes[w].train, probes[w].optim)}
        rates[w] = _cached_rate(keys[w])
        if rates[w] is None:
            tuners[w] = Tuner(w, t, say)
            tuners[w].pool  # noqa: B018 - starts its processes now, so every pool imports in parallel
    for w, tuner in tuners.items():
        job = job_for(probes[w])
        results = [r for r in tuner.pool.run([replace(job, key=f"{i}") for i in range(w)]).values() if r["ok"]]
        rates[w] = sum(r["train_img_per_s"] for r in results)
        _save_rate(keys[w], rates[w])
        if len(results) == w:  # the representative's calibration at this shape, for the estimate
            _calibration(job, {k: sum(r[k] for r in results) / w for k in results[0] if k != "ok"} | {"ok": 1})
    best = max(rates, key=rates.get)
    for w, tuner in tuners.items():
        if w != best:
            tuner.close()
    t = cores // best
    said = "; ".join(f"{w} x {cores // w} thread{'s' * (cores // w != 1)} {r:,.0f} img/s" for w, r in rates.items())
    say(f"workers=auto: {best} worker{'s' * (best != 1)} x {t} thread{'s' * (t != 1)} ({rep.spec.display_name} "
        f"trained side by side, images per second in all: {said})")
    return best, t, tuners.get(best)


def typical(items: Sequence[Item]) -> Item:
    """The architecture nearest the geometric mean of the study's MACs per image (its typical trial)."""
    logs = [math.log(max(it.macs, 1)) for it in items]
    centre = sum(logs) / len(logs)
    return min(items, key=lambda it: (abs(math.log(max(it.macs, 1)) - centre), it.macs))


def _cached_rate(key: dict[str, Any]) -> float | None:
    try:
        d = json.loads((cache_root() / f"workers-{_digest(key)}.json").read_text())
        return float(d["img_per_s"]) if d["key"] == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_rate(key: dict[str, Any], rate: float) -> None:
    atomic_write(cache_root() / f"workers-{_digest(key)}.json", json.dumps({"key": key, "img_per_s": rate}))


def items_of(trials: Iterable[Any], threads: int | None) -> list[Item]:
    """dse.space.TrialConfig's as Items with `threads` per worker."""
    out = []
    for tc in trials:
        train = tc.train_config(None)
        out.append(Item(tc.model, tc.optim_config(), replace(train, threads=threads or train.threads)))
    return out


__all__ = ["Item", "Setting", "Tuner", "candidates", "choose", "choose_workers", "cost_class", "resolve"]
