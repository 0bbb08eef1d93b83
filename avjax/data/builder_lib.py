"""Shared logic of the real-data TFDS builders (`ravdess`, `crema_d_av`).

Legend: T windows, F frames per window, S audio samples per window.

A builder subclasses `AVBuilder` and supplies three things: the dataset's
key in `registry.DATASETS`, the actor -> gender table (folds come from it, so
they are the same whichever files are present), and `find_clips(manual_dir)`,
which lists the clips and the files it had to reject. Everything else is here:

* Builder configs named by windowing: each Table I row of the dataset, its
  `_fit` twin, and the one-window readings of the `global` variant
  (`global_windowings` in `registry.DATASETS`); the default is the first
  (best) row. Datasets with `audio_records` in `registry.DATASETS` also get
  an audio-only twin of each, `audio_<windowing>`: the same records without
  the `video` feature, built from the audio files alone (`find_clips` is
  told which family it lists through `self.audio_only`).
* The manual_dir is checked before TFDS creates anything: a missing or
  wrongly laid-out one raises `ManualDirError` saying what was expected and
  where the official files are.
* Clips are decoded in a process pool (`num_workers`, default
  `os.cpu_count()`; 1 decodes in-process) with a progress bar. A clip that
  cannot be used is skipped, never silently: its file and reason go into the
  dataset's metadata (`info.metadata['skipped']`, a list of {file, reason})
  and a summary is printed at the end.
* `info.metadata['content']` is a sha256 of every record written (`clip_records.content_digest`),
  so that what is cached from the records (avjax.feature_store) can tell a rebuild
  from other sources apart even when every size is the same.
* Splits `fold0` ... `fold9`, array_record files, no TensorFlow. TFDS writes
  into an `incomplete.*` directory and renames it only when everything is
  written, so an interrupted build never looks prepared. `prepare` (used by
  scripts/build_datasets.py and by training) builds under a lock per builder
  config, removes the `incomplete.*` directories of killed builds first, and
  reports a file system that refuses the writes as `errors.StorageError`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import sys
from typing import Any, Iterator, Mapping, Sequence

import tensorflow_datasets as tfds
import tqdm
from etils import epath

from avjax import errors
from avjax import file_lock
from avjax.data import clip_records
from avjax.data import features
from avjax.data import folds as folds_lib
from avjax.data import media
from avjax.data import registry
from avjax.data import windows

VERSION = "1.2.0"
RELEASE_NOTES = {
    "1.0.0": "Initial release.",
    "1.1.0": "A window's first video frame is the one that contains its start "
             "(windows.first_frame); 1.0.0 rounded half to even, so video led or lagged "
             "the audio by half a frame at alternate windows.",
    "1.2.0": "The audio is stored as raw float32 bytes (Tensor encoding BYTES) instead of "
             "a protobuf float list: the same values, serialised about 70x faster (the "
             "audio-only build was bound by it).",
}


class ManualDirError(FileNotFoundError):
  """The manual_dir is missing or does not hold the official files as expected."""


INCOMPLETE_PREFIX = "incomplete."   # TFDS's folder for a build in progress


def remove_incomplete(config_dir: str) -> list[str]:
  """Removes the `incomplete.*` folders of `config_dir` (a builder config's folder), left
  by killed builds; call it holding the builder config's lock (`prepare`). Returns the folders removed."""
  removed = []
  try:
    names = sorted(os.listdir(config_dir))
  except OSError:
    return removed
  for name in names:
    path = os.path.join(config_dir, name)
    if name.startswith(INCOMPLETE_PREFIX) and os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


def prepare(builder, download_config=None, overwrite: bool = False) -> bool:
  """`builder.download_and_prepare(download_config=...)` under a lock per builder config,
  after removing the folders of killed builds (with a notice). Returns False when the
  dataset was prepared already (perhaps by another process meanwhile) and not
  `overwrite`. A file system that refuses the writes (full, read-only) raises
  errors.StorageError naming the folder; TFDS removes its partial folder then. The
  manual_dir of a real data set is checked before anything is written."""
  data_dir = os.fspath(builder.data_dir)
  config_dir = os.path.dirname(os.path.normpath(data_dir))
  if isinstance(builder, AVBuilder) and (overwrite or not builder.is_prepared()):
    builder.check_manual_dir(download_config)
  # One build of a builder config at a time; the others wait, then find it prepared.
  with file_lock.exclusive(os.path.join(config_dir, ".avjax_build.lock")):
    if builder.is_prepared() and not overwrite:
      return False
    for path in remove_incomplete(config_dir):
      print(f"notice: removed {path}, left by an interrupted build", flush=True)
    try:
      builder.download_and_prepare(download_config=download_config)
    except (ManualDirError, errors.AvjaxError):
      raise
    except Exception as e:  # noqa: BLE001  (TFDS and array_record wrap OSError in RuntimeError)
      failure = errors.as_storage_error(e, config_dir)
      if failure is None:
        raise
      remove_incomplete(config_dir)
      raise failure from e
  return True


AUDIO_PREFIX = registry.AUDIO_CONFIG_PREFIX   # 'audio_': audio-only builder configs


def split_name(name: str) -> tuple[bool, windows.WindowSpec]:
  """(audio_only, window spec) of a builder config name ('audio_w8_l1_ov' -> True, w8_l1_ov)."""
  audio_only = name.startswith(AUDIO_PREFIX)
  return audio_only, windows.parse_name(name[len(AUDIO_PREFIX):] if audio_only else name)


def describe(name: str, options: media.DecodeOptions = media.DecodeOptions()) -> str:
  audio_only, spec = split_name(name)
  mode = ("spread evenly over the clip" if spec.mode == "fit" else
          "the clip's loudest part" if spec.mode == "apex"
          else f"starting every {spec.hop:g} s, padded past the clip's end")
  if audio_only:
    return (f"audio only: {spec.num_windows} windows of {spec.length:g} s, {mode}; "
            f"{options.audio_rate} Hz mono audio")
  return (f"{spec.num_windows} windows of {spec.length:g} s, {mode}; {options.fps:g} fps, "
          f"{options.frame_size}x{options.frame_size} frames, {options.audio_rate} Hz mono audio")


def builder_configs(dataset: str) -> list[tfds.core.BuilderConfig]:
  return [tfds.core.BuilderConfig(name=n, description=describe(n))
          for n in registry.builder_config_names(dataset)]


@dataclasses.dataclass(frozen=True)
class ClipEntry:
  """One clip found in the manual_dir."""
  clip_id: str                     # file stem, the record key
  src: media.Source                # the video (or audio-visual) file
  actor: int
  fields: Mapping[str, Any]        # label, intensity, statement (fold, gender, actor added here)
  audio_path: str | None = None    # separate audio file (CREMA-D's AudioWAV)


def skipped(file: str, reason: str) -> dict[str, str]:
  return {"file": file, "reason": reason}


def find_files(root: pathlib.Path, suffix: str) -> list[pathlib.Path]:
  """Files under `root` whose name ends with `suffix` (case-insensitive), sorted;
  linked directories are followed (a manual_dir of symlinked `Actor_XX/` folders),
  each real directory visited once (no loop through a link to a parent)."""
  root = pathlib.Path(root)
  found, seen = [], set()
  for folder, dirs, files in os.walk(root, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:
      dirs[:] = []
      continue
    seen.add(real)
    dirs.sort()
    found += [pathlib.Path(folder, f) for f in files if f.lower().endswith(suffix.lower())]
  return sorted(found)


def listing(path: pathlib.Path, limit: int = 8) -> str:
  """A short listing of a directory for error messages."""
  try:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
  except OSError:
    return "(unreadable)"
  if not names:
    return "(empty)"
  more = f", ... ({len(names)} entries)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


class AVBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the real-data builders (see module docstring)."""

  DATASET: str = ""                 # key of registry.DATASETS
  HOMEPAGE: str = ""
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = RELEASE_NOTES

  # TFDS locates the builder's folder (README.md, CITATIONS.bib) through
  # `importlib_resources`, a package this project does not install.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(pathlib.Path(sys.modules[cls.__module__].__file__).resolve())

  def __init__(self, *, num_workers: int | None = None,
               decode_options: media.DecodeOptions | None = None,
               allow_missing_folds: bool = False, **kwargs: Any):
    """`allow_missing_folds`: build the folds whose actors have files and leave the
    others out (their splits do not exist; `info.metadata['missing_folds']` lists
    them) instead of refusing. NOT the paper's protocol: for trying a few actors."""
    kwargs.setdefault("file_format", "array_record")
    self._allow_missing_folds = bool(allow_missing_folds)
    self._missing_folds: list[int] = []
    self._num_workers = int(num_workers) if num_workers is not None else (os.cpu_count() or 1)
    if self._num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {self._num_workers}")
    self._options = decode_options or media.DecodeOptions()
    self._clips: list[ClipEntry] | None = None
    self._skipped: list[dict[str, str]] = []
    self._digests: dict[str, str] = {}
    self._missing_actors: list[int] = []
    self._progress = None
    self._jobs: dict[int, list[clip_records.ClipJob]] = {}
    self._scheduler: clip_records.Scheduler | None = None
    super().__init__(**kwargs)

  # -- to be provided by the dataset -------------------------------------------------------

  def genders(self) -> dict[int, str]:
    """Every actor of the dataset -> 'male' / 'female' (decides the folds)."""
    raise NotImplementedError

  def find_clips(self, manual_dir: pathlib.Path) -> tuple[list[ClipEntry], list[dict[str, str]]]:
    """Clips in manual_dir and the files rejected on the way ({file, reason});
    raises ManualDirError when manual_dir is not laid out as expected."""
    raise NotImplementedError

  # -- TFDS ------------------------------------------------------------------------------

  @property
  def spec(self) -> windows.WindowSpec:
    return split_name(self.builder_config.name)[1]

  @property
  def audio_only(self) -> bool:
    """True for the `audio_<windowing>` configs: no video, read from the audio files."""
    return split_name(self.builder_config.name)[0]

  @property
  def actor_folds(self) -> dict[int, int]:
    return folds_lib.assign_folds(self.genders())

  def _info(self) -> tfds.core.DatasetInfo:
    spec, o = self.spec, self._options
    return self.dataset_info_from_configs(
        features=features.features_dict(
            num_windows=spec.num_windows,
            frames_per_window=o.frames_per_window(spec.length),
            frame_size=o.frame_size,
            samples_per_window=o.samples_per_window(spec.length),
            class_names=registry.DATASETS[self.DATASET]["class_names"],
            with_video=not self.audio_only),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(
            fps=o.fps, frame_size=o.frame_size, audio_rate=o.audio_rate,
            window=spec.name, window_mode=spec.mode, num_windows=spec.num_windows,
            window_length=spec.length, window_overlap=spec.overlap,
            center_crop=o.center_crop, interpolation=o.interpolation,
            max_av_mismatch=o.max_av_mismatch, audio_only=self.audio_only,
            skipped=[], missing_actors=[], missing_folds=[], content=""),
    )

  def _manual_dir(self, download_dir, download_config) -> pathlib.Path:
    """The manual_dir as TFDS resolves it (DownloadConfig.manual_dir or <downloads>/manual)."""
    if download_config is not None and download_config.manual_dir:
      return pathlib.Path(os.fspath(download_config.manual_dir)).expanduser()
    base = pathlib.Path(os.fspath(download_dir)) if download_dir else pathlib.Path(
        os.fspath(self.data_dir_root)) / "downloads"
    return base / "manual"

  def scan(self, manual_dir: pathlib.Path) -> list[ClipEntry]:
    """Lists and checks the clips of manual_dir (fails at once when unusable)."""
    manual_dir = pathlib.Path(manual_dir)
    if not manual_dir.is_dir():
      what = ("is a file: give the folder that holds it" if manual_dir.exists()
              else "does not exist")
      raise ManualDirError(f"manual_dir {manual_dir} {what}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    clips, rejected = self.find_clips(manual_dir)
    genders = self.genders()
    known = []
    for c in clips:
      if c.actor not in genders:
        rejected.append(skipped(pathlib.Path(str(c.src)).name, f"unknown actor {c.actor}"))
      else:
        known.append(c)
    if not known:
      why = "".join(f"\n  {r['file']}: {r['reason']}" for r in rejected[:5])
      raise ManualDirError(
          f"No {self.DATASET} clips found in manual_dir {manual_dir} (it holds: "
          f"{listing(manual_dir)})." + (f" Files rejected ({len(rejected)}), e.g.:{why}"
                                         if rejected else "")
          + f"\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    folds = self.actor_folds
    present = {c.actor for c in known}
    empty = [f for f in range(folds_lib.NUM_FOLDS) if not any(folds[a] == f for a in present)]
    if empty:
      detail = "; ".join(
          f"fold{f}: actors {sorted(a for a, k in folds.items() if k == f)}" for f in empty)
      if not self._allow_missing_folds:
        raise ManualDirError(
            f"manual_dir {manual_dir} has no clips for {detail}: every fold needs its actors' "
            f"files. Present actors: {sorted(present)}. To try the folds present only (not the "
            "paper's protocol), build with --allow_missing_folds "
            "(config.dataset.allow_missing_folds=True).\n" + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
      print(f"allow_missing_folds: building the folds present only, NOT the paper's 10-fold "
            f"protocol; no clips for {detail}", flush=True)
    self._missing_folds = list(empty)
    self._skipped = list(rejected)
    self._missing_actors = sorted(set(genders) - present)
    return sorted(known, key=lambda c: c.clip_id)

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
    # Check the manual_dir before TFDS creates any directory (fail at once).
    download_config = download_config or tfds.download.DownloadConfig()
    mode = tfds.download.GenerateMode(download_config.download_mode)
    if self.is_prepared() and not mode.overwrite_dataset:
      return super().download_and_prepare(
          download_dir=download_dir, download_config=download_config, **kwargs)
    if self._clips is None:   # else checked by check_manual_dir
      self._clips = self.scan(self._manual_dir(download_dir, download_config))
    super().download_and_prepare(
        download_dir=download_dir, download_config=download_config, **kwargs)
    print(self.summary(), flush=True)

  def _download_and_prepare(self, dl_manager, download_config):
    self._digests = {}
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      if self._progress is not None:
        self._progress.close()
        self._progress = None
      if self._scheduler is not None:
        self._scheduler.close()
        self._scheduler = None
    meta = self.info.metadata
    meta["skipped"] = sorted(self._skipped, key=lambda s: (s["file"], s["reason"]))
    meta["missing_actors"] = list(self._missing_actors)
    meta["missing_folds"] = list(self._missing_folds)
    meta["content"] = clip_records.content_digest(self._digests)

  def check_manual_dir(self, download_config=None) -> None:
    """Scans the manual_dir now (ManualDirError when unusable); the build uses the scan."""
    download_config = download_config or tfds.download.DownloadConfig()
    self._clips = self.scan(self._manual_dir(None, download_config))

  def summary(self) -> str:
    """The end-of-build summary: clips written per split, files skipped and why."""
    splits = self.info.splits
    total = sum(splits[s].num_examples for s in splits.keys()) if splits else 0
    lines = [f"{self.name}/{self.builder_config.name}: {total} clips written to {self.data_dir}"]
    skipped_list = self.info.metadata.get("skipped", [])
    lines.append(f"{len(skipped_list)} file(s) skipped" + (":" if skipped_list else "."))
    lines += [f"  {s['file']}: {s['reason']}" for s in skipped_list]
    missing = self.info.metadata.get("missing_actors", [])
    if missing:
      lines.append(f"actors with no files in manual_dir: {missing}")
    missing_folds = self.info.metadata.get("missing_folds", [])
    if missing_folds:
      lines.append(f"folds not built (allow_missing_folds; not the paper's protocol): "
                   f"{missing_folds}")
    return "\n".join(lines)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if self._clips is None:  # called without our download_and_prepare (e.g. a TFDS tool)
      self._clips = self.scan(pathlib.Path(os.fspath(dl_manager.manual_dir)))
    folds = self.actor_folds
    genders = self.genders()
    jobs: dict[int, list[clip_records.ClipJob]] = {f: [] for f in range(folds_lib.NUM_FOLDS)}
    for c in self._clips:
      fields = dict(c.fields)
      fields.update(actor=c.actor, fold=folds[c.actor], gender=genders[c.actor],
                    clip_id=c.clip_id)
      jobs[folds[c.actor]].append(clip_records.ClipJob(
          key=c.clip_id, src=c.src, spec=self.spec, options=self._options, fields=fields,
          audio_path=c.audio_path, compress_video=not self.audio_only,
          with_video=not self.audio_only))
    self._jobs = jobs
    if not self.audio_only:
      self._accept_precompressed_video()
    self._progress = tqdm.tqdm(total=len(self._clips), unit="clip", dynamic_ncols=True,
                               desc=f"Decoding {self.name}/{self.builder_config.name}")
    # Folds without clips (only with allow_missing_folds) get no split at all.
    return {f"fold{f}": self._generate_examples(f, jobs[f]) for f in range(folds_lib.NUM_FOLDS)
            if jobs[f]}

  def _accept_precompressed_video(self) -> None:
    """Lets this builder's video feature take the workers' `clip_records.ZlibVideo` as is.

    The workers compress the video exactly as `Tensor(encoding='zlib')` does
    (after checking its shape and dtype), so the stored bytes are the same and
    readers see no difference; only the main process is spared the work. The
    override is on this builder's feature object only.
    """
    feature = self.info.features["video"]
    encode = type(feature).encode_example.__get__(feature)

    def encode_example(value):
      if isinstance(value, clip_records.ZlibVideo):
        return bytes(value)
      return encode(value)

    feature.encode_example = encode_example

  def _results(self, fold: int, jobs: Sequence[clip_records.ClipJob]) -> Iterator[tuple[str, Any, str | None]]:
    if self._num_workers == 1:
      for job in jobs:
        yield clip_records.run_job(job)
      return
    if self._scheduler is None:
      self._scheduler = clip_records.Scheduler(self._jobs, self._num_workers)
    yield from self._scheduler.results(fold)

  def _generate_examples(self, fold: int, jobs: Sequence[clip_records.ClipJob]):
    files = {job.key: job.file for job in jobs}
    written = 0
    for key, record, reason in self._results(fold, jobs):
      if self._progress is not None:
        self._progress.update(1)
      if record is None:
        self._skipped.append(skipped(files[key], reason))
        tqdm.tqdm.write(f"skipped {files[key]}: {reason}")
        continue
      written += 1
      self._digests[key] = clip_records.record_digest(record)
      yield key, record
    if not written:
      raise ManualDirError(
          f"fold{fold}: none of its {len(jobs)} clips could be used (" + "; ".join(
              f"{s['file']}: {s['reason']}" for s in self._skipped if s["file"] in files.values())
          + ")")


