"""A trained fold's model and reference bank for inference (`Predictor`);
`avjax.predict` is its command line.

Legend: T windows (gates), F frames per window, H = W stored frame size, X crop
size, S audio samples per window, N reference clips, G gate-embedding size,
C classes.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import numpy as np

from avjax import choices
from avjax import errors
from avjax import face_crop as face_crop_lib
from avjax import reference_bank
from avjax import workdir as workdir_lib


def _media():
  from avjax.data import media
  return media


def decode_video(path: str, options, box: tuple[int, int, int, int] | None = None
                 ) -> tuple[np.ndarray, float]:
  """Video only, as `media.decode` decodes it: ([N, H, H, 3] uint8, duration in s);
  `box` (x, y, w, h in source pixels) is cropped before resizing (--face_crop)."""
  clip = _media().decode(path, options=options, with_audio=False, box=box)
  return clip.video, clip.duration


def _streams(path: str) -> tuple[bool, bool]:
  """(has a video stream, has an audio stream); MediaError when unreadable. A cover
  image (an attached picture) is not a video stream."""
  media = _media()
  container = media._open(path)
  try:
    return bool(media.video_streams(container)), bool(container.streams.audio)
  finally:
    container.close()


def attempt(path: str, fn) -> tuple[Any, str | None]:
  """(fn(path), None), or (None, why it failed: missing, undecodable or anything else;
  one bad file must not stop the others)."""
  media = _media()
  try:
    if not os.path.isfile(path):
      raise media.MediaError(path, "file not found" if not os.path.exists(path) else "not a file")
    return fn(path), None
  except media.MediaError as e:
    return None, e.reason
  except Exception as e:  # noqa: BLE001
    return None, f"unexpected error: {type(e).__name__}: {e}"


MIN_SPEAKER_CLIPS = 2   # the fewest readable clips `Predictor.predict_speaker` centres by


class Predictor:
  """A fold's restored model and reference bank; `predict(path)` runs one file,
  `predict_speaker(paths)` several of one speaker (a model trained with
  `input.speaker_centering`, `same_speaker=True`)."""

  def __init__(self, workdir: str, fold: int | None = None, checkpoint: str | None = None,
               face_crop: bool = False, same_speaker: bool = False):
    self.workdir = os.path.abspath(workdir)
    if not os.path.isdir(self.workdir):
      raise errors.UsageError(f"--workdir {workdir}: no such directory")
    try:
      self.config = workdir_lib.load_config(self.workdir)
      self.fold = reference_bank.choose_fold(self.workdir, self.config, fold)
      self.config = workdir_lib.load_fold_config(self.workdir, self.fold)  # as trained
    except (FileNotFoundError, errors.CorruptFileError) as e:
      raise errors.UsageError(str(e)) from None
    self.speaker_centred = bool(self.config.input.get("speaker_centering", False))
    self.speaker_scaled = bool(self.config.input.get("speaker_scaling", False))
    if self.speaker_centred and not same_speaker:
      raise errors.UsageError(
          f"{self.workdir} was trained with input.speaker_centering=True: one file does not "
          "give its speaker's mean; pass several clips of one speaker with --same_speaker")
    if same_speaker and not self.speaker_centred:
      raise errors.UsageError(
          f"--same_speaker: {self.workdir} was not trained with input.speaker_centering, "
          "so each file is classified on its own; drop the flag")
    self.fold_dir = workdir_lib.fold_dir(self.workdir, self.fold)
    self.bank = reference_bank.load_bank(os.path.join(self.fold_dir, workdir_lib.REFERENCE_BANK))
    self.meta = self.bank.meta
    self.face_crop = face_crop
    if face_crop:
      face_crop_lib.require_cv2()
      if self.meta["video"] is None:
        raise errors.UsageError("--face_crop: this model uses audio only")
    from avjax import train_state as train_state_lib    # default: the one training reported
    self.checkpoint = checkpoint or train_state_lib.result_checkpoint(self.config, self.fold)
    self.state, self.step = self._restore(self.checkpoint)
    self._forward = None
    self._trunks: dict[str, Any] = {}

  # ---- model
  def _sample_batch(self) -> dict[str, np.ndarray]:
    w, v, a = self.meta["window"], self.meta["video"], self.meta["audio"]
    t = int(w["num_windows"])
    batch = {}
    if v is not None:
      c = int(v["crop_size"])
      batch["video"] = np.zeros((1, t, int(v["frames_per_window"]), c, c, 3), np.uint8)
    if a is not None:
      batch["audio"] = np.zeros((1, t, int(a["samples_per_window"])), np.float32)
    return batch

  def _restore(self, which: str):
    import jax
    from avjax import parallel
    from avjax import train_state as train_state_lib
    mesh = parallel.make_mesh(jax.devices()[:1])
    repl, _ = parallel.shardings(mesh)
    try:
      step = train_state_lib.saved_step(self.fold_dir, self.config, which)
    except train_state_lib.CheckpointNotFound as e:
      raise errors.UsageError(str(e)) from None
    if step != self.bank.step:
      raise errors.UsageError(
          f"{self.bank.path} holds embeddings of step {self.bank.step}, but the {which} "
          f"checkpoint of fold {self.fold} is step {step}: the KNN references would come from "
          f"another model. Rewrite the bank with: python -m avjax.evaluate "
          f"--workdir={self.workdir} --folds={self.fold} --checkpoint={which}")
    from avjax import fixed_trunk
    try:
      state, _, step = train_state_lib.restore_for_inference(
          self.config, self.fold_dir,
          fixed_trunk.model_input_shapes(self.config, self._sample_batch()), repl, step=step)
    except Exception as e:  # noqa: BLE001  (orbax raises many types; name the checkpoint)
      raise errors.UsageError(f"cannot restore checkpoint {step} of {self.fold_dir}/checkpoints: "
                       f"{type(e).__name__}: {e}") from None
    if int(jax.device_get(state.step)) != step:
      raise errors.UsageError(f"checkpoint {step} of {self.fold_dir} holds state.step "
                       f"{int(jax.device_get(state.step))}")
    return state, int(step)

  def trunk_features(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The fixed layers' features of one clip's windows, {modality: [T, ...] float32},
    for each modality whose layers below the cut are cached in training, as the
    feature store extracts the clean view."""
    import jax
    from avjax import fixed_trunk
    from avjax import run_spec
    from avjax.data import feature_cache
    out = {}
    for modality, cut in run_spec.of(self.config).trunk_inputs.items():
      if cut is None or inputs.get(modality) is None:
        continue
      x = np.asarray(inputs[modality])
      if modality not in self._trunks:
        enc = fixed_trunk.encoder(self.config, modality)
        window = jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype)
        self._trunks[modality] = (
            jax.jit(functools.partial(fixed_trunk._features, enc,
                                      feature_cache.endpoint(self.config, modality))),
            fixed_trunk.trunk_variables(self.config, modality, window))
      fn, variables = self._trunks[modality]
      out[modality] = np.asarray(jax.device_get(fn(variables, x)), np.float32)
    return out

  def speaker_stats(self, clips: Sequence[dict[str, Any]]
                    ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{modality: (mean [C], std [C] or None)}: the mean feature of one speaker's clips
    (`clips`: preprocessed inputs with their `trunk_features` under 'features'), and
    for a model trained with `input.speaker_scaling` the std it divides by, weighted
    as training weights an actor's (`feature_cache.actor_means`, `actor_scales`), over
    the clips that have the modality."""
    from avjax.data import feature_cache
    stats = {}
    for modality in clips[0]["features"]:
      have = [c for c in clips if c[f"has_{modality}"]]
      if not have:
        continue
      features = [np.stack([c["features"][modality] for c in have])[:, None]]  # [n, 1, T, ...]
      actors = np.zeros(len(have), np.int64)
      valid = np.stack([c["window_valid"] for c in have])                      # [n, T]
      means = feature_cache.actor_means(features, actors, valid)
      scale = None
      if self.speaker_scaled:
        scale = feature_cache.actor_scales(features, actors, valid, means)[0].astype(np.float32)
      stats[modality] = (means[0].astype(np.float32), scale)
    return stats

  def embed(self, inputs: dict[str, np.ndarray],
            speaker: dict[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """Gate embeddings of one clip: {'audio_gate'/'video_gate': [T, G] float32}. A
    speaker-centred model takes `speaker`, the speaker's `speaker_stats`."""
    from avjax import fixed_trunk
    if self.speaker_centred:
      if speaker is None:
        raise ValueError("a speaker-centred model needs the speaker's statistics (speaker)")
      return self._embed_centred(inputs, speaker)
    if self._forward is None:
      # The whole network on raw media (a frozen trunk's fixed layers merged back in).
      apply_fn, variables = fixed_trunk.inference_model(self.config, self.state,
                                                        self._sample_batch())
      self._jit_gates(apply_fn, variables)
    return self._gates({k: inputs[k][None] for k in ("video", "audio", "window_valid")
                        if inputs.get(k) is not None})

  def _jit_gates(self, apply_fn, variables) -> None:
    """The jitted gate embeddings of `apply_fn` with `variables`, once per Predictor."""
    import jax
    from avjax.models import gating
    self._variables = variables
    self._forward = jax.jit(functools.partial(
        gating.gate_embeddings, apply_fn, modalities=self.config.model.modalities,
        mask_padded_windows=bool(self.config.loss.mask_padded_windows)))

  def _gates(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{'audio_gate'/'video_gate': [T, G] float32} of a batch of one clip."""
    import jax
    out = self._forward(self._variables, batch)
    return {k: np.asarray(v[0], np.float32) for k, v in jax.device_get(out).items()}

  def _embed_centred(self, inputs: dict[str, Any], speaker: dict[str, tuple]):
    """The state's own model (above the cut) on the clip's trunk features minus the
    speaker's means (and divided by its stds), as training reads the feature store."""
    if self._forward is None:
      self._jit_gates(self.state.apply_fn,
                      {"params": self.state.params, "batch_stats": self.state.batch_stats})
    features = inputs.get("features") or self.trunk_features(inputs)
    batch = {"window_valid": inputs["window_valid"][None]}
    for modality in ("video", "audio"):
      if inputs.get(modality) is None:
        continue
      if modality in features:
        f = features[modality]
        mean, scale = speaker.get(modality, (np.zeros(f.shape[-1], np.float32), None))
        f = f - mean
        batch[modality] = (f if scale is None else f / scale)[None]
      else:
        batch[modality] = inputs[modality][None]
    return self._gates(batch)

  # ---- preprocessing
  def decode_options(self):
    media = _media()
    v, a = self.meta["video"] or {}, self.meta["audio"] or {}
    return media.DecodeOptions(
        fps=float(v.get("fps", media.DEFAULT_FPS)),
        frame_size=int(v.get("frame_size", media.DEFAULT_FRAME_SIZE)),
        center_crop=bool(v.get("center_crop", False)),
        audio_rate=int(round(a.get("rate", media.AUDIO_RATE))),
        interpolation=str(v.get("interpolation", "AREA")),
        max_av_mismatch=None)

  def window_spec(self):
    from avjax.data import windows
    w = self.meta["window"]
    return windows.WindowSpec(num_windows=int(w["num_windows"]), length=float(w["length"]),
                              overlap=float(w["overlap"]), mode=str(w["mode"]))

  def preprocess(self, path: str) -> dict[str, Any]:
    """Decodes and windows one file as the model's inputs.

    Returns video [T, F, X, X, 3] uint8 or None, audio [T, S] float32 or None,
    window_valid [T], starts [T], duration, has_audio, has_video, notes [str].
    Raises media.MediaError when the file cannot be used.
    """
    from avjax.data import windows
    media = _media()
    options, spec = self.decode_options(), self.window_spec()
    wants_video, wants_audio = self.meta["video"] is not None, self.meta["audio"] is not None
    has_video, has_audio = _streams(path)
    notes: list[str] = []
    if wants_video and not has_video and not (wants_audio and has_audio):
      raise media.MediaError(path, "no video stream")
    if wants_audio and not has_audio and not (wants_video and has_video):
      raise media.MediaError(path, "no audio stream")
    use_video, use_audio = wants_video and has_video, wants_audio and has_audio
    if wants_audio and not has_audio:
      notes.append("no audio stream: VO results only")
    if wants_video and not has_video:
      notes.append("no video stream: AO results only")

    video = audio = None
    duration = None
    box = None
    if use_video and self.face_crop:
      box = face_crop_lib.face_box(path)
      if box is None:
        notes.append("no face found: the whole frame is used")
      else:
        notes.append("face crop x={} y={} size={}".format(*box[:3]))
    if use_video and use_audio and box is None:
      try:
        clip = media.decode(path, options=options)
        video, audio, duration = clip.video, clip.audio, clip.duration
      except media.MediaError as e:
        if not e.reason.startswith("no audio"):
          raise
        use_audio = False
        notes.append(f"{e.reason}: VO results only")
    if video is None and use_video:
      video, duration = decode_video(path, options, box)
    if audio is None and use_audio:
      try:
        clip = media.decode(path, options=options, with_video=False)
      except media.MediaError as e:
        if not (use_video and e.reason.startswith("no audio")):
          raise
        use_audio = False
        notes.append(f"{e.reason}: VO results only")
      else:
        audio = clip.audio
        if duration is None:
          duration = clip.duration
    if spec.mode == "apex" and not has_audio:
      notes.append("no audio stream: the centred window, not the loudest")
    if spec.mode == "apex" and audio is None and has_audio:
      # The builders place an apex window by the audio's energy, for every model.
      try:
        audio = media.decode(path, options=options, with_video=False).audio
      except media.MediaError as e:
        notes.append(f"{e.reason}: the centred window, not the loudest")
    clip = media.Clip(video=video, audio=audio, duration=float(duration),
                      video_duration=None, audio_duration=None)
    from avjax.data import clip_records
    cut = clip_records.cut_windows(clip, spec, options)
    if spec.mode == "fixed" and spec.num_windows > 1 and duration > spec.span + 1e-3:
      notes.append(f"the clip lasts {duration:.2f} s; the windows cover its first "
                   f"{spec.span:g} s only")
    starts = windows.window_starts(spec, float(duration), audio, options.audio_rate)
    out: dict[str, Any] = {"window_valid": np.asarray(cut["window_valid"], np.float32),
                           "starts": starts, "duration": float(duration),
                           "has_video": use_video, "has_audio": use_audio, "notes": notes,
                           "video": None, "audio": None}
    t = spec.num_windows
    if wants_video:
      v = self.meta["video"]
      f, c, h = int(v["frames_per_window"]), int(v["crop_size"]), int(v["frame_size"])
      if use_video:
        frames = cut["video"]                                           # [T, F, H, H, 3]
        if frames.shape != (t, f, h, h, 3):
          raise RuntimeError(f"{path}: windows {frames.shape}, the model expects {(t, f, h, h, 3)}")
        off = (h - c) // 2
        out["video"] = np.ascontiguousarray(frames[:, :, off:off + c, off:off + c])  # [T, F, X, X, 3]
      else:
        out["video"] = np.zeros((t, f, c, c, 3), np.uint8)
    if wants_audio:
      s = int(self.meta["audio"]["samples_per_window"])
      out["audio"] = cut["audio"] if use_audio else np.zeros((t, s), np.float32)   # [T, S]
      if out["audio"].shape != (t, s):
        raise RuntimeError(f"{path}: audio windows {out['audio'].shape}, the model expects {(t, s)}")
    return out

  # ---- classification
  def modalities(self, has_audio: bool, has_video: bool) -> list[str]:
    keep = {"AO": has_audio, "VO": has_video, "AV": has_audio and has_video}
    return [m for m in self.meta["gate_modalities"] if keep[m]]

  def classify(self, gates: dict[str, np.ndarray], modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """{M: [T, C] float32 vote fractions} for each modality."""
    from avjax import knn
    num_classes, k = len(self.bank.class_names), int(self.meta["k"])
    out = {}
    for m in modalities:
      refs = self.bank.modality_refs(m)                                  # [N, T, G*]
      query = np.concatenate([gates[key] for key in choices.MODALITY_KEYS[m]], axis=-1)  # [T, G*]
      out[m] = np.stack([knn.knn_scores(refs[:, t], self.bank.labels, query[t:t + 1], k=k,
                                        num_classes=num_classes)[0]
                         for t in range(query.shape[0])])
    return out

  def predict(self, path: str) -> dict[str, Any]:
    """The result object of one file (docs/predict.md); raises media.MediaError."""
    if self.speaker_centred:
      raise errors.UsageError("a speaker-centred model classifies several clips of one "
                              "speaker together: use predict_speaker")
    inputs = self.preprocess(path)
    return self._result(path, inputs, self.embed(inputs))

  def predict_speaker(self, paths: Sequence[str]) -> list[tuple[str, dict | None, str | None]]:
    """(path, result, None) or (path, None, reason) per file, in order: the files are
    clips of one speaker, each centred by their mean trunk features (a model trained
    with `input.speaker_centering`). Files that cannot be read take no part in the
    mean; fewer than MIN_SPEAKER_CLIPS readable ones fail every file."""
    def read(path: str) -> dict[str, Any]:
      inputs = self.preprocess(path)
      return dict(inputs, features=self.trunk_features(inputs))

    clips: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for path in paths:
      inputs, reason = attempt(path, read)
      if reason is None:
        clips[path] = inputs
      else:
        failed[path] = reason
    if len(clips) < MIN_SPEAKER_CLIPS:
      reason = (f"--same_speaker: {len(clips)} readable clip(s) of the speaker; the model "
                f"centres by their mean and needs at least {MIN_SPEAKER_CLIPS}")
      return [(p, None, failed.get(p, reason)) for p in paths]
    speaker = self.speaker_stats(list(clips.values()))
    how = ("centred and scaled by the speaker's mean and std" if self.speaker_scaled
           else "centred by the speaker's mean")
    out = []
    for path in paths:
      if path in failed:
        out.append((path, None, failed[path]))
        continue
      # A new notes list: a path given twice must not collect the note twice.
      inputs = dict(clips[path], notes=clips[path]["notes"] + [f"{how} over {len(clips)} clips"])
      result = self._result(path, inputs, self.embed(inputs, speaker))
      result["speaker_clips"] = len(clips)
      out.append((path, result, None))
    return out

  def _result(self, path: str, inputs: dict[str, Any], gates: dict[str, np.ndarray]
              ) -> dict[str, Any]:
    modalities = self.modalities(inputs["has_audio"], inputs["has_video"])
    scores = self.classify(gates, modalities)
    names = self.bank.class_names
    gate_rows = []
    for t, (start, valid) in enumerate(zip(inputs["starts"], inputs["window_valid"])):
      row = {"gate": t + 1, "start": round(float(start), 4),
             "valid_fraction": round(float(valid), 4), "valid": bool(valid > 0)}
      for m in modalities:
        if row["valid"]:
          s = scores[m][t]
          row[m] = {"emotion": names[int(np.argmax(s))],
                    "scores": {n: round(float(x), 6) for n, x in zip(names, s)}}
        else:
          row[m] = None
      gate_rows.append(row)
    valid = [r for r in gate_rows if r["valid"]]
    final = {}
    if valid:
      last = valid[-1]
      final = {m: dict(last[m], gate=last["gate"]) for m in modalities}
    return {
        "file": path, "ok": True, "duration": round(inputs["duration"], 4),
        "has_audio": inputs["has_audio"], "has_video": inputs["has_video"],
        "modalities": modalities, "notes": inputs["notes"],
        "num_valid_gates": len(valid), "gates": gate_rows, "prediction": final,
        "model": {"workdir": self.workdir, "fold": self.fold, "checkpoint": self.checkpoint,
                  "step": self.step, "k": int(self.meta["k"]), "dataset": self.meta["dataset"],
                  "config": self.meta["config"], "variant": self.meta["variant"]},
        "class_names": names,
    }
