"""VideoDiffusionModule: the training/sampling loop around a WanDiT, a frozen codec and a frozen text encoder."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor
from torch.distributed.tensor import DTensor

from ultragen.checkpoints import load_dit_weights
from ultragen.codecs.base import VideoCodec
from ultragen.diffusion import EulerSampler, FlowMatching
from ultragen.data.prompts import fit_image
from ultragen.eval.objects import to_uint8
from ultragen.lit.recipe import (
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    checkpoint_blocks,
    checkpoint_interval,
    fill_from_rank0,
    run_with_rank0_errors,
    select_trainable,
    shard_blocks,
)
from ultragen.lit.resume import batch_generator, rng_states, set_rng_states
from ultragen.lit.zero3 import is_partitioned, load_partitioned, outside_zero_init, partition_summary
from ultragen.models.attention import VideoGrid
from ultragen.models.wan import WanDiT
from ultragen.parallel.sequence import check_sequence_parallel, sequence_parallel
from ultragen.text.base import TextEncoder

log = logging.getLogger(__name__)
# The frozen codec and text encoder stay in eval mode on purpose (no dropout in frozen encoders); Lightning warns
# about every eval-mode module at the start of training, so only that message is silenced.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

# The negative prompt of the UltraGen release (inference.py).
RELEASE_NEGATIVE_PROMPT = (
    "Aerial view, overexposed, low quality, deformation, bad composition, bad hands, bad teeth, bad eyes, "
    "bad limbs, distortion, blurring, text, subtitles"
)
FROZEN_PREFIXES = ("codec.", "text_encoder.")


def first_frame_clean(grid: VideoGrid, t: Tensor, clean: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token timesteps (B, N) with the first latent frame's tokens at 0 where `clean` (B,) bool, and the loss
    mask (B, 1, grid.t, 1, 1) that drops that frame there. Needs a temporal patch of 1 (one latent frame a token)."""
    per_frame = grid.h * grid.w
    token_t = t[:, None].repeat(1, grid.t * per_frame)
    token_t[:, :per_frame] *= (~clean)[:, None].to(t)
    mask = torch.ones(t.shape[0], 1, grid.t, 1, 1, device=t.device)
    mask[:, :, 0] = (~clean).float().view(-1, 1, 1, 1)
    return token_t, mask


@dataclass
class SamplingConfig:
    """Video size and sampler settings for validation samples and `predict` (paper: 30 steps, CFG 5)."""

    frames: int = 81
    height: int = 480
    width: int = 832
    fps: int = 16
    steps: int = 30
    guidance_scale: float = 5.0
    shift: float = 5.0
    negative_prompt: str = RELEASE_NEGATIVE_PROMPT


class VideoDiffusionModule(L.LightningModule):
    """Flow-matching fine-tuning of a WanDiT; `net` builds it with in_dim/text_dim from codec/text encoder.

    The DiT is built on first use (`self.net`): under a Trainer in `configure_model`, inside the strategy's sharding
    context, so DeepSpeed ZeRO-3 partitions it while it is built and loads `net_weights` into it module by module;
    its seeded initial weights are the same under every strategy (`build_net`).

    `net_weights` initialises the DiT from a Wan2.1 / diffusers / UltraGen-release / Lightning file before training
    (`net_weights_strict: false` accepts a partial load, reported in the log).
    `sp_degree` > 1 splits each clip's tokens over that many consecutive ranks (`ultragen.parallel.sequence`): the
    ranks of a group train on their first rank's clip and noise, so the data-parallel batch is per group.
    """

    def __init__(
        self,
        net: Callable[[int, int], WanDiT],
        codec: VideoCodec,
        text_encoder: TextEncoder,
        net_weights: str | None = None,
        net_weights_format: Literal["auto", "wan2.1", "diffusers", "ultragen_release", "lightning"] = "auto",
        net_weights_strict: bool = True,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        flow_shift: float = 5.0,
        loss_weighting: Literal["none", "diffsynth", "x0"] = "diffsynth",
        prediction: Literal["velocity", "x0"] = "velocity",
        text_dropout: float = 0.1,
        first_frame_condition: float = 0.0,
        text_cache_size: int = 0,
        trainable: Literal["all", "strategy", "lora"] = "all",
        lora_rank: int = DEFAULT_LORA_RANK,
        lora_alpha: float | None = None,
        lora_targets: list[str] | None = None,
        activation_checkpointing: Literal["none", "blocks"] | int = "none",
        exclude_frozen_parameters: bool = False,
        sp_degree: int = 1,
        sampling: SamplingConfig | None = None,
    ):
        super().__init__()
        # net_weights only initialises a fresh run; a checkpoint restores the DiT without re-reading that file
        self.save_hyperparameters(ignore=["codec", "text_encoder", "net_weights"])
        self.codec = codec.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        # The DiT is built later (`net`): its random initialisation draws from the global RNG state of this moment,
        # so it starts from the same weights whenever, wherever and under whichever strategy it is built.
        self.net_factory, self.net_rng = net, torch.get_rng_state()
        self.initialised_from, self.net_weights_format, self.net_weights_strict = (
            net_weights, net_weights_format, net_weights_strict)
        self.trainable_args = (trainable, lora_rank, lora_alpha, lora_targets or list(DEFAULT_LORA_TARGETS))
        blueprint = self.blueprint()  # a config that cannot be built fails here, while the CLI instantiates
        self.net_patch_size = blueprint.patch_size
        self.flow = FlowMatching(shift=flow_shift, loss_weighting=loss_weighting, prediction=prediction)
        self.sampling = sampling or SamplingConfig()
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        if not 0.0 <= text_dropout < 1.0:
            raise ValueError(f"text_dropout={text_dropout} must be in [0, 1)")
        self.text_dropout = text_dropout
        if not 0.0 <= first_frame_condition <= 1.0:
            raise ValueError(f"first_frame_condition={first_frame_condition} must be a probability in [0, 1]")
        if first_frame_condition > 0 and self.net_patch_size[0] != 1:
            raise ValueError(
                f"first_frame_condition needs a temporal patch of 1 (one latent frame per token), the DiT has "
                f"patch_size={list(self.net_patch_size)}; set model.first_frame_condition: 0"
            )
        self.first_frame_condition = first_frame_condition
        self.noise_seed = torch.initial_seed()  # `seed_everything`'s seed; the checkpoint keeps it for the resume
        if text_cache_size < 0:
            raise ValueError(f"text_cache_size={text_cache_size} must be >= 0 (0 disables the cache)")
        self._text_cache: OrderedDict[str, Tensor] = OrderedDict()
        self.checkpoint_every = checkpoint_interval(activation_checkpointing)
        self.exclude_frozen_parameters = exclude_frozen_parameters
        check_sequence_parallel(blueprint, sp_degree)
        self.sp_degree, self.sequence = sp_degree, None
        self._batch_start = 0.0

    # -------------------------------------------------------------- the DiT
    @property
    def net(self) -> WanDiT:
        """The DiT, built on first use: by the Trainer in `configure_model`, inside the strategy's sharding context
        (DeepSpeed ZeRO-3 partitions it while it is built), or on first access outside a Trainer
        (`load_from_checkpoint` calls `configure_model` too)."""
        if "net" not in self._modules:
            try:
                self.build_net()
            except AttributeError as exn:  # would surface as "no attribute 'net'" through nn.Module.__getattr__
                raise RuntimeError(f"building the DiT failed: {exn}") from exn
        return self._modules["net"]

    def blueprint(self) -> WanDiT:
        """The DiT on the meta device with the trainable selection: no memory, no random draws; it checks the
        configuration and tells the patch size and parameter counts before the network exists."""
        with torch.device("meta"):
            blueprint = self.net_factory(self.codec.latent_channels, self.text_encoder.dim)
            select_trainable(blueprint, *self.trainable_args)
        n_train = sum(p.numel() for p in blueprint.parameters() if p.requires_grad)
        if n_train == 0:
            raise ValueError(f"trainable={self.trainable_args[0]!r} leaves no trainable parameter in this network")
        log.info("trainable=%s: %.2fM of %.2fM DiT parameters", self.trainable_args[0], n_train / 1e6,
                 sum(p.numel() for p in blueprint.parameters()) / 1e6)
        return blueprint

    def build_net(self, on_meta: bool = False) -> None:
        """The DiT from `net` with the RNG state of `__init__`, then `net_weights`, then the trainable selection
        (peft LoRA), as `self.net`. On the CPU in float32 as the network's own code builds it (Lightning moves and
        converts it later), so its seeded weights do not depend on the strategy, device or precision; under
        DeepSpeed ZeRO-3's `zero.Init` partitioned as it is built, loaded module by module, with the adapters
        added outside `zero.Init`. `on_meta`: without weights (FSDP2 ranks that receive rank 0's)."""
        default_dtype = torch.get_default_dtype()
        with torch.random.fork_rng(devices=[]), torch.device("meta" if on_meta else "cpu"):
            torch.set_rng_state(self.net_rng)
            torch.set_default_dtype(torch.float32)
            try:
                net = self.net_factory(self.codec.latent_channels, self.text_encoder.dim)
                partitioned = is_partitioned(net)
                if self.initialised_from is not None and not on_meta:
                    load = load_partitioned if partitioned else load_dit_weights
                    load(net, self.initialised_from, format=self.net_weights_format, strict=self.net_weights_strict)
                with outside_zero_init() if partitioned else contextlib.nullcontext():
                    net = select_trainable(net, *self.trainable_args)
            finally:
                torch.set_default_dtype(default_dtype)
        if partitioned:
            log.info("ZeRO-3: %s", partition_summary(net))
        elif self._trainer is not None and getattr(self.trainer.strategy, "zero_stage_3", False):
            log.warning("ZeRO-3: the DiT was built outside deepspeed.zero.Init (before configure_model, or by a "
                        "callback such as EMA weight averaging): every rank holds it whole until DeepSpeed starts")
        self.net = net

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Token budgets of the data must count tokens the way this codec and DiT make them. DeepSpeed saves its
        own checkpoints, so `exclude_frozen_parameters` is handed to it."""
        if self._trainer is not None and isinstance(self.trainer.strategy, DeepSpeedStrategy):
            self.trainer.strategy.exclude_frozen_parameters = self.exclude_frozen_parameters
            if self.exclude_frozen_parameters:  # DeepSpeed restores its module states itself, without our hook
                self.strict_loading = False
        budget = getattr(self.trainer.datamodule, "budget", None) if self._trainer is not None else None
        if budget is None:
            return
        ours = (self.codec.temporal_factor, self.codec.spatial_factor, self.net_patch_size)
        theirs = (budget.temporal_factor, budget.spatial_factor, tuple(budget.patch))
        if ours != theirs:
            raise ValueError(
                f"data token budget assumes (temporal_factor, spatial_factor, patch) = {theirs} but the codec and DiT "
                f"give {ours}; set data.init_args.temporal_factor/spatial_factor/patch to match"
            )

    def configure_model(self) -> None:
        """Builds the DiT (`build_net`; the Trainer calls this inside the strategy's sharding context), then sequence
        parallelism and activation checkpointing of DiT blocks, then FSDP2 sharding under Lightning's
        `ModelParallelStrategy` (all kept out of the model code). Idempotent.

        Under FSDP2 rank 0 alone builds the DiT whole (seeded, `net_weights`, adapters); the other ranks build it on
        the meta device, and after `fully_shard` rank 0's tensors are broadcast into every rank's shards
        (`fill_from_rank0`), so one process per node, not each, holds the whole network on the host.
        """
        fsdp2 = self._device_mesh is not None and not getattr(self, "_sharded", False)
        if fsdp2 and self._device_mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                f"ModelParallelStrategy tensor_parallel_size={self._device_mesh['tensor_parallel'].size()}: the DiT is "
                "sharded with FSDP2 only; set trainer.strategy.init_args.data_parallel_size to the world size and "
                "tensor_parallel_size: 1"
            )
        full_state, from_rank0 = None, False
        if "net" not in self._modules:
            strategy = self._trainer.strategy if self._trainer is not None else None
            if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
                if not strategy.config.get("zero_optimization", {}).get("override_module_apply", True):
                    raise ValueError(
                        "DeepSpeed ZeRO-3 with zero_optimization.override_module_apply: false cannot initialise the "
                        "DiT while zero.Init partitions it (its weights are set through Module.apply); remove it"
                    )
            if fsdp2:
                on_meta = torch.distributed.get_rank() != 0
                run_with_rank0_errors(partial(self.build_net, on_meta=on_meta))
                full_state, from_rank0 = None if on_meta else self.net.state_dict(), True
                log.info("FSDP2: rank %d built the DiT %s", torch.distributed.get_rank(),
                         "on the meta device" if on_meta else "whole, for every rank's shards")
            else:
                self.build_net()
        if self.sp_degree > 1 and self.sequence is None:
            self.sequence = sequence_parallel(self.net, self.sp_degree)
        if self.checkpoint_every and not getattr(self, "_checkpointed", False):
            checkpoint_blocks(self.net, self.checkpoint_every)
            self._checkpointed = True
        if fsdp2:
            n = shard_blocks(self.net, self._device_mesh["data_parallel"])
            log.info("FSDP2: %d DiT blocks sharded over %d ranks", n, self._device_mesh["data_parallel"].size())
            if from_rank0:
                fill_from_rank0(self.net, full_state)
            self._sharded = True

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(optimizer), "interval": "step"}}

    # --------------------------------------------------------------- encoding
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """(B, L, text_dim) zero-padded token states; the last `text_cache_size` distinct prompts are memoised
        (the encoder is frozen), which pays off when captions repeat, as in procedural data sets."""
        size = self.hparams.text_cache_size
        if size == 0:
            return self.text_encoder(list(prompts)).to(self.device, torch.float32)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            self._text_cache.update(zip(missing, self.text_encoder(missing).to(self.device, torch.float32)))
        for p in prompts:
            self._text_cache.move_to_end(p)
        states = torch.stack([self._text_cache[p] for p in prompts]).to(self.device)
        while len(self._text_cache) > size:
            self._text_cache.popitem(last=False)
        return states

    @torch.no_grad()
    def encode_batch(
        self, batch: dict, dropout: bool, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Latents and text states of a batch, precomputed ones when present; captions dropped with p=text_dropout
        (drawn on the CPU from `generator`)."""
        latents = batch["latents"].float() if "latents" in batch else self.codec.encode(batch["video"]).float()
        if "text" in batch:
            text = batch["text"].float()
            if dropout and self.text_dropout > 0:
                keep = (torch.rand(text.shape[0], generator=generator) >= self.text_dropout).to(text.device)
                text = text * keep[:, None, None]  # precomputed text: dropped captions become the null context
        else:
            captions = list(batch["caption"])
            if dropout and self.text_dropout > 0:
                drop = torch.rand(len(captions), generator=generator) < self.text_dropout
                captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            text = self.encode_text(captions)
        return latents, text

    # ------------------------------------------------------------------- loss
    def velocity(self, x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """The DiT's output at (x_t, t) as a velocity (converted from x_0 when `prediction: x0`)."""
        return self.flow.velocity(self.net(x_t, t, context), x_t, t)

    def diffusion_loss(self, latents: Tensor, text: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching loss at random levels. With `first_frame_condition` p, each clip keeps its first latent
        frame clean with probability p (Wan2.2 TI2V): those tokens get t = 0 and that frame leaves the loss."""
        sigma, t, weight = self.flow.sample(latents.shape[0], generator=generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents) if generator else torch.randn_like(latents)
        x_t = self.flow.add_noise(latents, noise, sigma.to(latents.device))
        t = t.to(latents.device)
        net_t, mask = t, None
        if self.first_frame_condition > 0:
            clean = (torch.rand(latents.shape[0], generator=generator) < self.first_frame_condition).to(latents.device)
            net_t, mask = first_frame_clean(self.net.token_grid(*latents.shape[2:]), t, clean)
            x_t[:, :, :1] = torch.where(clean.view(-1, 1, 1, 1, 1), latents[:, :, :1], x_t[:, :, :1])
            mask = mask.to(latents)
        pred = self.flow.velocity(self.net(x_t, net_t, text), x_t, t)
        return self.flow.loss(pred, self.flow.target(latents, noise), weight.to(latents.device), mask)

    def shared_batch(self, latents: Tensor, text: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Under sequence parallelism, the group's first rank's latents, text and generator state on every rank of
        the group (they split one clip); otherwise the arguments unchanged."""
        if self.sequence is None:
            return latents, text
        latents, text, state = self.sequence.share(latents, text, generator.get_state())
        generator.set_state(state)
        return latents, text

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Caption dropout, timesteps and noise come from `batch_generator(noise_seed, batch index, rank)`, not from
        the global RNG: the same for a batch in every run, so a resumed run's losses equal the uninterrupted one's.

        Under sequence parallelism each rank's gradients hold its share of the clip's, and the data-parallel
        average runs over every rank, so the loss is scaled by `sp_degree` for the backward pass (logged unscaled).
        """
        index = self.trainer.fit_loop.epoch_loop.total_batch_idx
        generator = batch_generator(self.noise_seed, index, self.global_rank // self.sp_degree)
        latents, text = self.shared_batch(*self.encode_batch(batch, dropout=True, generator=generator), generator)
        loss = self.diffusion_loss(latents, text, generator)
        self._tokens = latents.shape[0] * self.net.token_grid(*latents.shape[2:]).numel
        self.log("train/loss", loss, prog_bar=True, batch_size=latents.shape[0])
        if "skipped" in batch:
            self.log("data/skipped", batch["skipped"].float().sum(), reduce_fx="sum", batch_size=latents.shape[0])
        return loss * self.sp_degree

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        generator = torch.Generator().manual_seed(batch_idx)  # same noise levels every validation
        latents, text = self.shared_batch(*self.encode_batch(batch, dropout=False), generator)
        loss = self.diffusion_loss(latents, text, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=latents.shape[0])
        return loss

    def test_step(self, batch: dict, batch_idx: int) -> Tensor:
        generator = torch.Generator().manual_seed(batch_idx)
        latents, text = self.shared_batch(*self.encode_batch(batch, dropout=False), generator)
        loss = self.diffusion_loss(latents, text, generator)
        self.log("test/loss", loss, sync_dist=True, batch_size=latents.shape[0])
        return loss

    # --------------------------------------------------------------- logging
    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self._batch_start
        self.log("train/tokens_per_s", self._tokens / max(elapsed, 1e-9))

    def on_before_optimizer_step(self, optimizer) -> None:
        """`train/grad_norm`, the global L2 norm (FSDP2's sharded gradients are reduced over the ranks; DeepSpeed
        keeps its gradients to itself, so its runs log none)."""
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if grads:
            total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            self.log("train/grad_norm", total.full_tensor() if isinstance(total, DTensor) else total)

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(
        self, prompts: list[str], seeds: list[int], progress: bool = False, first_frames: Tensor | None = None
    ) -> Tensor:
        """Videos (B, 3, F, H, W) uint8 for prompts; noise drawn on the CPU in float32 from each seed (as Wan).

        `first_frames` (B, 3, H, W) in [-1, 1] at the sampling size makes it image-to-video (Wan2.2 TI2V): the
        image's latent is the first latent frame at every step, its tokens at t = 0, and only the rest is denoised.
        Under sequence parallelism each rank samples its prompts alone, with the whole token sequence.
        """
        s = self.sampling
        c, t, h, w = self.codec.latent_shape(s.frames, s.height, s.width)
        noise = torch.stack([torch.randn(c, t, h, w, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds])
        dtype = next(self.net.parameters()).dtype
        context = self.encode_text(prompts).to(dtype)
        negative = self.encode_text([s.negative_prompt] * len(prompts)).to(dtype) if s.guidance_scale != 1.0 else None
        velocity = self.velocity
        if first_frames is not None:
            if tuple(first_frames.shape[-2:]) != (s.height, s.width):
                raise ValueError(
                    f"first frames of size {tuple(first_frames.shape[-2:])} do not match the sampling size "
                    f"{(s.height, s.width)}; resize them first (ultragen.data.prompts.fit_image does)"
                )
            first = self.codec.encode(first_frames[:, :, None].to(self.device, torch.float32))[:, :, :1].to(dtype)
            grid = self.net.token_grid(t, h, w)
            one = torch.ones(1, device=self.device)  # per-token factor of the step's t: 0 on the held first frame
            token_scale, _ = first_frame_clean(grid, one, torch.ones(1, dtype=torch.bool, device=self.device))
            velocity = partial(self.conditioned_velocity, first, token_scale)
            noise[:, :, :1] = first.cpu().to(noise.dtype)
        sampler = EulerSampler(steps=s.steps, shift=s.shift, guidance_scale=s.guidance_scale)
        # each rank samples its own prompts with the whole network (sampling callbacks run on rank 0 alone)
        with self.sequence.whole_sequence() if self.sequence is not None else contextlib.nullcontext():
            latents = sampler.sample(velocity, noise.to(self.device, dtype), context, negative, progress=progress)
        video = self.codec.decode(latents.float())
        return to_uint8(video).cpu()

    def conditioned_velocity(
        self, first: Tensor, token_scale: Tensor, x_t: Tensor, t: Tensor, context: Tensor
    ) -> Tensor:
        """The velocity with the first latent frame held at `first` (B, C, 1, h, w): its tokens see t = 0 (t times
        `token_scale` (1, N)) and its velocity is zero, so an Euler step leaves it as it is."""
        x_t = torch.cat([first, x_t[:, :, 1:]], dim=2)
        v = self.flow.velocity(self.net(x_t, t[:, None] * token_scale, context), x_t, t)
        return torch.cat([torch.zeros_like(v[:, :, :1]), v[:, :, 1:]], dim=2)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One video per prompt; prompts with an image (`first_frame`, uint8) become image-to-video."""
        seeds = [int(s) for s in batch["seed"]]
        first_frames = None
        if "first_frame" in batch:
            first_frames = fit_image(batch["first_frame"], self.sampling.height, self.sampling.width)
        video = self.generate(batch["prompt"], seeds, progress=True, first_frames=first_frames)
        return {"key": list(batch["key"]), "prompt": list(batch["prompt"]), "video": video}

    # ------------------------------------------------------------ checkpoints
    def rebuilt_keys(self, frozen_dit: bool) -> set[str]:
        """State keys a checkpoint leaves out because the config rebuilds them: the frozen codec and text encoder,
        and with `frozen_dit` (`exclude_frozen_parameters`) the DiT's frozen weights (from `net_weights`)."""
        keys = {k for k in self.state_dict() if k.startswith(FROZEN_PREFIXES)}
        if frozen_dit:
            keys |= {f"net.{k}" for k, p in self.net.named_parameters() if not p.requires_grad}
        return keys

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Frozen codec and text encoder are rebuilt from config, not stored (umT5-XXL alone is 11 GB), nor, with
        `exclude_frozen_parameters`, the frozen DiT weights of a `strategy` or `lora` run; also from the training
        weights that EMA moves to `current_model_state`. The noise seed and global RNG states are kept for the
        resume."""
        rebuilt = self.rebuilt_keys(self.exclude_frozen_parameters)
        for name in ("state_dict", "current_model_state"):
            state = checkpoint.get(name, {})
            for key in [k for k in state if k in rebuilt]:
                del state[key]
        checkpoint["noise_seed"] = self.noise_seed
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Puts the frozen weights back; when resuming a fit, restores the noise seed and the global RNG states
        (which only third-party draws use: ours come from `batch_generator`)."""
        excluded = checkpoint.get("hyper_parameters", {}).get("exclude_frozen_parameters", False)
        if excluded and self.initialised_from is None:
            raise ValueError(
                "this checkpoint holds only the trained DiT tensors (model.exclude_frozen_parameters); set "
                "model.net_weights to the run's base weights so the frozen ones are rebuilt from them"
            )
        rebuilt = self.rebuilt_keys(excluded)
        frozen = {k: v for k, v in self.state_dict().items() if k in rebuilt}
        checkpoint["state_dict"] = frozen | checkpoint.get("state_dict", {})
        if "current_model_state" in checkpoint:  # the training weights, when EMAWeightAveraging saved the average
            checkpoint["current_model_state"] = frozen | checkpoint["current_model_state"]
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self.noise_seed = checkpoint.get("noise_seed", self.noise_seed)
            if "rng_states" in checkpoint:
                set_rng_states(checkpoint["rng_states"])
