"""The training loop: seeded minibatches, validation each epoch, progress callback and cancellation.

The same `train` function serves `digits train` and the service's background jobs. The recipe it
follows is declared in model.recipe (its names are re-exported here, where callers have found them).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from model.augment import augment
from model.checkpoint import Checkpoint, check_resumable, data_fingerprint, load_checkpoint, save_checkpoint
from model.layers import DistillationLoss
from model.network import Ensemble, Network
from model.optim import SGD, Adam
from model.recipe import (ADAM_LEARNING_RATE, ARCHITECTURE_RECIPES, ENSEMBLE, LATER_FIELDS, SCHEDULES,  # noqa: F401
                          TRAINABLE, Recipe, recipe_for)


@dataclass
class Progress:
    """What the loop reports after every step and at the end of every epoch."""
    epoch: int           # 1-based
    n_epochs: int
    step: int            # steps done in this epoch
    n_steps: int         # steps per epoch
    loss: float          # running mean training loss this epoch (the epoch's mean on the end-of-epoch report)
    samples_per_s: float
    val_accuracy: float | None = None  # set on the end-of-epoch report only
    epoch_done: bool = False
    smoothed_loss: float | None = None  # moving average over steps, carried across epochs: a curve without
                                        # the running mean's jump where each epoch starts it again

    @property
    def fraction(self) -> float:
        return ((self.epoch - 1) * self.n_steps + self.step) / (self.n_epochs * self.n_steps)


@dataclass
class TrainResult:
    network: Network | Ensemble
    best_epoch: int | None
    val_accuracy: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def scheduled_rate(recipe: "Recipe", t: float) -> float:
    """The learning rate after t epochs of training (t is fractional within an epoch)."""
    E = recipe.epochs
    if recipe.schedule == "exponential":
        factor = recipe.lr_decay ** math.floor(t)
    elif recipe.schedule == "step":
        factor = 0.1 ** ((t >= 0.5 * E) + (t >= 0.75 * E))
    else:  # cosine
        factor = 0.5 * (1 + math.cos(math.pi * min(t, E) / E))
    if recipe.warmup_epochs and t < recipe.warmup_epochs:
        factor *= t / recipe.warmup_epochs
    return recipe.learning_rate * factor


class TrainingCancelled(Exception):
    """Raised between steps when `should_stop()` answers True."""


def accuracy(network: Network, X: np.ndarray, y: np.ndarray) -> float:
    """Fraction of X that `network` labels correctly."""
    return float((network.predict(X) == y).mean()) if len(y) else float("nan")


def generators(network: Network, shuffle: np.random.Generator, augmentation: np.random.Generator
               ) -> dict[str, np.random.Generator]:
    """Every random generator a training run draws from, by a stable name (what a checkpoint keeps)."""
    found = {"shuffle": shuffle, "augment": augmentation}
    for i, layer in enumerate(network.layers):
        if isinstance(getattr(layer, "rng", None), np.random.Generator):
            found[f"layer{i}"] = layer.rng
    return found


@contextmanager
def averaged_weights(network: Network, optimizer: SGD | Adam):
    """Inside: the network holds the optimizer's EMA of its parameters (if it keeps one); after: its own.

    The batch normalisation statistics stay those the trained weights ran up: the average moves
    slowly, so the activations it makes differ little from the recent weights', and re-estimating
    the statistics under it would cost a pass over the training data every epoch.
    """
    if not optimizer.ema_decay or not optimizer.averaged():
        yield
        return
    own = {k: v.copy() for k, v in network.parameters().items()}
    network.set_parameters(optimizer.averaged())
    try:
        yield
    finally:
        network.set_parameters(own)


LOSS_AVERAGE_DECAY = 0.98  # about the last 50 steps


@dataclass
class LossAverage:
    """Exponential moving average of the step losses, bias-corrected as Adam's moments are, so the first
    steps are not pulled towards 0."""
    decay: float = LOSS_AVERAGE_DECAY
    total: float = 0.0
    n_steps: int = 0

    def add(self, loss: float) -> None:
        self.total = self.decay * self.total + (1 - self.decay) * loss
        self.n_steps += 1

    @property
    def value(self) -> float:
        return self.total / (1 - self.decay ** self.n_steps) if self.n_steps else float("nan")


@dataclass
class Run:
    """The state of one network's training run, all that a checkpoint holds, and where it stands."""
    recipe: Recipe
    network: Network
    optimizer: SGD | Adam
    rng: np.random.Generator        # shuffling (and, first, the network's initial weights)
    aug_rng: np.random.Generator    # augmentation: its own stream, so augmenting leaves shuffling unchanged
    fingerprint: str                # of the data, when checkpointing ("" otherwise)
    best: tuple = (-1.0, 0, None)   # (validation accuracy, epoch, state) of the best epoch so far
    history: list = field(default_factory=list)
    first_epoch: int = 1
    seconds_before: float = 0.0     # training time of the epochs done before a resume
    started: float = field(default_factory=time.perf_counter)
    loss_average: LossAverage = field(default_factory=LossAverage)  # reported only, never trained on
    teacher: Network | Ensemble | None = None   # distilling: the network whose soft targets are learnt
    distillation: DistillationLoss | None = None

    @property
    def rngs(self) -> dict[str, np.random.Generator]:
        return generators(self.network, self.rng, self.aug_rng)

    @property
    def per_step_rate(self) -> bool:
        """The plain exponential schedule keeps its per-epoch multiplication (so shipped models reproduce
        bit for bit); the others set the rate at every step."""
        return self.recipe.schedule != "exponential" or self.recipe.warmup_epochs > 0

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started


def start_run(recipe: Recipe, fingerprint: str, start_from: Network | None = None,
              teacher: Network | Ensemble | None = None) -> Run:
    """A fresh run: the seeded network (with `start_from`'s weights, when fine-tuning), optimizer and, when
    distilling, the teacher with the recipe's loss."""
    rng = np.random.default_rng(recipe.seed)
    network = Network.from_architecture(recipe.architecture, seed=int(rng.integers(2**31)))
    if start_from is not None:
        network.set_state(start_from.state())  # copied in: the source network stays as it was
    optimizer = (SGD(recipe.learning_rate, recipe.momentum, ema_decay=recipe.ema_decay) if recipe.optimizer == "sgd"
                 else Adam(recipe.learning_rate, ema_decay=recipe.ema_decay))
    run = Run(recipe, network, optimizer, rng, np.random.default_rng([recipe.seed, 1]), fingerprint)
    if teacher is not None:
        run.teacher = teacher
        run.distillation = DistillationLoss(recipe.distill_temperature, recipe.distill_weight)
    return run


def distillation_step(run: Run, X: np.ndarray, y: np.ndarray, gradient_scale: float) -> float:
    """`Network.loss_and_gradients` with the distillation loss: the teacher's logits on the same batch, in
    inference mode (no dropout draws, batch normalisation by its running statistics; it is never trained).
    Returns the loss; the gradients are those of `gradient_scale` times it."""
    teacher_logits = run.teacher.logits(X)  # an Ensemble's: log of its averaged probabilities
    loss = run.distillation.forward(run.network.forward(X, training=True), y, teacher_logits)
    run.network.backward(run.distillation.backward(gradient_scale))
    return loss


def resume_run(run: Run, checkpoint: Path) -> None:
    """Put `run` where its checkpoint left it: network, optimizer, generators, best epoch and history.
    CheckpointError if the checkpoint is of another recipe or other data."""
    ckpt = load_checkpoint(checkpoint)
    check_resumable(checkpoint, ckpt, run.recipe.to_dict(), run.fingerprint)
    run.network.set_state(ckpt.network)
    run.optimizer.load_state(*ckpt.optimizer)
    for name, generator in run.rngs.items():
        generator.bit_generator.state = ckpt.rng_states[name]
    run.best = (ckpt.best_accuracy, ckpt.best_epoch, ckpt.best)
    run.history, run.first_epoch, run.seconds_before = ckpt.history, ckpt.epoch + 1, ckpt.seconds


def train_epoch(run: Run, epoch: int, X_train: np.ndarray, y_train: np.ndarray,
                on_progress: Callable[[Progress], None] | None, should_stop: Callable[[], bool] | None,
                report_every: int) -> float:
    """One pass over the shuffled (and, with the recipe's `augment`, distorted) training set; returns
    the mean loss of its steps (L2 term excluded)."""
    recipe, network, optimizer = run.recipe, run.network, run.optimizer
    n = len(X_train)
    n_steps = -(-n // recipe.batch_size)
    weight_decay = dict.fromkeys(network.weight_keys(), recipe.l2)
    augmentation = recipe.augmentation()
    order = run.rng.permutation(n)
    epoch_start, loss_sum = time.perf_counter(), 0.0
    for step in range(n_steps):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"cancelled in epoch {epoch}, step {step}")
        idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
        if run.per_step_rate:
            optimizer.learning_rate = scheduled_rate(recipe, epoch - 1 + (step + 1) / n_steps)
        X_batch = X_train[idx] if not recipe.augment else augment(X_train[idx], run.aug_rng, augmentation)
        # L2's gradient goes into the update, not into the gradients: fewer passes over the weights;
        # its term in the loss is added where the loss is reported.
        # Plain SGD takes its gradients pre-scaled by the rate: one pass fewer over the weights.
        scale = optimizer.gradient_scale
        if run.teacher is None:
            loss = network.loss_and_gradients(X_batch, y_train[idx], gradient_scale=scale)
        else:
            loss = distillation_step(run, X_batch, y_train[idx], scale)
        loss_sum += loss
        run.loss_average.add(loss)
        optimizer.step(network.parameters(), network.gradients(), weight_decay, gradient_scale=scale)
        if on_progress is not None and ((step + 1) % report_every == 0 or step + 1 == n_steps):
            done = min((step + 1) * recipe.batch_size, n)
            l2_term = network.l2_penalty(recipe.l2)
            on_progress(Progress(epoch, recipe.epochs, step + 1, n_steps, loss_sum / (step + 1) + l2_term,
                                 done / (time.perf_counter() - epoch_start),
                                 smoothed_loss=run.loss_average.value + l2_term))
    return loss_sum / n_steps


def validate_epoch(run: Run, epoch: int, X_val: np.ndarray, y_val: np.ndarray) -> dict:
    """Validate the epoch's weights (their moving average, with EMA) and keep them if they are the
    best so far; returns the epoch's history record without loss and timing."""
    record = {}
    if run.recipe.ema_decay:
        record["val_accuracy_raw"] = accuracy(run.network, X_val, y_val) if len(y_val) else float("nan")
    with averaged_weights(run.network, run.optimizer):  # validate (and keep) the average, if there is one
        val_acc = accuracy(run.network, X_val, y_val) if len(y_val) else float("nan")
        if not len(y_val) or val_acc > run.best[0]:
            run.best = (val_acc, epoch, {k: v.copy() for k, v in run.network.state().items()})  # buffers too
    record["val_accuracy"] = val_acc
    return record


def checkpoint_run(run: Run, checkpoint: Path, epoch: int) -> None:
    """Write the whole state after `epoch`, atomically (`model.checkpoint`)."""
    save_checkpoint(checkpoint, Checkpoint(
        run.recipe.to_dict(), run.fingerprint, epoch, run.network.state(), run.best[2], run.best[0], run.best[1],
        run.history, run.optimizer.state(), {name: g.bit_generator.state for name, g in run.rngs.items()},
        run.seconds()))


def fraction_size(n: int, fraction: float) -> int:
    """How many of n images a `train_fraction` keeps: at least one."""
    return n if fraction >= 1 else max(1, round(n * fraction))


def seeded_subset(X: np.ndarray, y: np.ndarray, n_keep: int, seed: int, stream: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """n_keep rows of (X, y) drawn without replacement by a generator of their own ([seed, stream]: the
    run's shuffling and augmentation streams are untouched), in their original order; all when
    n_keep covers them."""
    if n_keep >= len(y):
        return X, y
    keep = np.sort(np.random.default_rng([seed, stream]).choice(len(y), n_keep, replace=False))
    return X[keep], y[keep]


def training_share(X_train: np.ndarray, y_train: np.ndarray, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """The recipe's seeded `train_fraction` of the training images, in their original order; all at 1.
    Seeded by the recipe's seed, so an ensemble member's seed + i draws its own share."""
    if recipe.train_fraction >= 1:
        return X_train, y_train
    return seeded_subset(X_train, y_train, fraction_size(len(y_train), recipe.train_fraction), recipe.seed, 3)


def train(recipe: Recipe, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
          on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          report_every: int = 20, checkpoint: Path | None = None,
          start_from: Network | None = None, teacher: Network | Ensemble | None = None) -> TrainResult:
    """Train the recipe's architecture; keep the parameters of the epoch with the best validation accuracy.

    X_*: (N, 784) float32 in [0, 1]; y_*: (N,) int. With no validation data the last epoch is kept.
    With `checkpoint`, the whole training state is written there (atomically) after every epoch, and a
    run whose checkpoint exists goes on from it (`model.checkpoint`): the result is the same, bit for
    bit, as an uninterrupted run. A checkpoint of another recipe or other data raises CheckpointError.
    With `recipe.ema_decay`, validation, the choice of epoch and the result use the optimizer's moving
    average of the weights (`averaged_weights`); the history also records the trained weights' accuracy.
    `start_from` (with `recipe.fine_tune`): a network of the recipe's architecture whose weights training
    starts from instead of random ones; a checkpoint then also matches only the same starting weights.
    With `recipe.train_fraction` < 1, a seeded share of X_train is trained on (`training_share`).
    `teacher` (with `recipe.distill_from`, where it was loaded from): distil it (`distillation_step`); a
    checkpoint then also matches only the same teacher's weights.
    """
    recipe.validate()
    if recipe.fine_tune != (start_from is not None):
        raise ValueError("a fine-tuning recipe needs the network to start from, and only it takes one")
    if bool(recipe.distill_from) != (teacher is not None):
        raise ValueError("a distillation recipe (distill_from) needs the teacher network, and only it takes one")
    if recipe.architecture == ENSEMBLE:
        return train_ensemble(recipe, X_train, y_train, X_val, y_val, on_progress, should_stop, report_every,
                              checkpoint, teacher)
    X_train, y_train = training_share(X_train, y_train, recipe)
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    starting = () if start_from is None else tuple(start_from.state().values())
    teaching = () if teacher is None else tuple(teacher.state().values())
    run = start_run(recipe, data_fingerprint(X_train, y_train, X_val, y_val, *starting, *teaching)
                    if checkpoint is not None else "", start_from, teacher)
    if checkpoint is not None and Path(checkpoint).exists():
        resume_run(run, checkpoint)
    run.started = time.perf_counter()
    n_steps = -(-len(X_train) // recipe.batch_size)
    for epoch in range(run.first_epoch, recipe.epochs + 1):
        epoch_start = time.perf_counter()
        loss = train_epoch(run, epoch, X_train, y_train, on_progress, should_stop, report_every)
        epoch_seconds = time.perf_counter() - epoch_start
        record = {"epoch": epoch, "loss": loss + run.network.l2_penalty(recipe.l2),
                  **validate_epoch(run, epoch, X_val, y_val)}
        record.update({"learning_rate": run.optimizer.learning_rate, "seconds": epoch_seconds})
        run.history.append(record)
        if on_progress is not None:
            on_progress(Progress(epoch, recipe.epochs, n_steps, n_steps, record["loss"],
                                 len(X_train) / epoch_seconds, record["val_accuracy"], epoch_done=True,
                                 smoothed_loss=run.loss_average.value + run.network.l2_penalty(recipe.l2)))
        if not run.per_step_rate:
            run.optimizer.learning_rate *= recipe.lr_decay
        if checkpoint is not None:
            checkpoint_run(run, checkpoint, epoch)
    run.network.set_state(run.best[2])
    return TrainResult(run.network, run.best[1], run.best[0], run.history, run.seconds())


def member_checkpoint(checkpoint: Path, i: int) -> Path:
    """Where member i of an ensemble run keeps its checkpoint: beside `checkpoint`, numbered."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.member{i}{checkpoint.suffix or '.npz'}")


def checkpoint_files(checkpoint: Path, recipe: Recipe) -> list[Path]:
    """Every file a run of `recipe` with `checkpoint` may write: the path, or one per ensemble member."""
    if recipe.architecture == ENSEMBLE:
        return [member_checkpoint(checkpoint, i) for i in range(recipe.members)]
    return [Path(checkpoint)]


def train_ensemble(recipe: Recipe, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                   on_progress: Callable[[Progress], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   report_every: int = 20, checkpoint: Path | None = None,
                   teacher: Network | Ensemble | None = None) -> TrainResult:
    """Train `recipe.members` networks of `recipe.member_architecture` one after another (seeds seed,
    seed+1, ...; each keeps its own best validation epoch, its own `train_fraction` share, and distils
    `teacher` if given) and average them. Progress counts the
    members' epochs as one run: member i's epoch e is epoch i * epochs + e of members * epochs."""
    E, networks, history, seconds = recipe.epochs, [], [], 0.0
    for i in range(recipe.members):
        member = replace(recipe, architecture=recipe.member_architecture, seed=recipe.seed + i)

        def forward(p: Progress, offset: int = i * E) -> None:
            if on_progress is not None:
                on_progress(replace(p, epoch=offset + p.epoch, n_epochs=recipe.members * E))

        result = train(member, X_train, y_train, X_val, y_val, forward, should_stop, report_every,
                       None if checkpoint is None else member_checkpoint(checkpoint, i), teacher=teacher)
        networks.append(result.network)
        history += [{**record, "member": i, "epoch": i * E + record["epoch"]} for record in result.history]
        seconds += result.seconds
    ensemble = Ensemble.of(networks)
    val_acc = accuracy(ensemble, X_val, y_val) if len(y_val) else float("nan")
    return TrainResult(ensemble, None, val_acc, history, seconds)  # each member chose its own epoch
