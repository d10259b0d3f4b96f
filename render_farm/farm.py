"""One render task: its slice of the assets → Blender workers → crash-safe shards.

``render_task`` is what ``lift3d-render objaverse`` runs on one machine (or in one SLURM array task). It is
resumable: objects already in a committed shard, or already recorded as failed, are not rendered again (pass
``retry_failed`` to try failures once more). Before the first object it checks what would otherwise fail every
object: the settings (and the rig built with its options), an empty selection, and an ``--out`` that holds samples
rendered with other settings (``_state/settings.json``).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from render_farm.config import RenderConfig
from render_farm.shards import ShardWriter, check_settings
from render_farm.sources import SUPPORTED_EXTENSIONS, Asset, LocalDirSource
from render_farm.tasks import task_slice
from render_farm.worker import WorkerPool


@dataclass
class TaskSummary:
    task: int
    count: int
    assigned: int = 0
    already_done: int = 0
    ok: int = 0
    failed: int = 0
    views: int = 0
    seconds: float = 0.0
    worker_maxrss_mb: float = 0.0
    worker_starts: int = 0
    failures: list = field(default_factory=list)

    @property
    def views_per_s(self) -> float:
        return self.views / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"task {self.task}/{self.count}: {self.ok} ok, {self.failed} failed, {self.already_done} already done "
                f"of {self.assigned} objects; {self.views} views in {self.seconds:.1f}s = "
                f"{self.views_per_s:.2f} views/s; peak worker memory {self.worker_maxrss_mb:.0f} MB")


class AssetSelectionError(ValueError):
    """The source selects nothing to render, or cannot list its assets (a user error: the message says why)."""


def _no_assets_message(source) -> str:
    if isinstance(source, LocalDirSource):
        return (f"--glb-dir {source.root!r} holds no assets (no {', '.join(SUPPORTED_EXTENSIONS)} files in it or its "
                f"subdirectories); point --glb-dir at the folder with your assets")
    return f"the {getattr(source, 'name', 'asset')} selection is empty: nothing to render; check the selection flags"


def _precheck(asset: Asset, cfg: RenderConfig) -> str | None:
    """Why the asset cannot be rendered without starting Blender, or None."""
    if asset.path is None:
        return asset.metadata.get("fetch_error", "asset could not be fetched")
    if not os.path.isfile(asset.path):
        return f"file not found: {asset.path}"
    size_mb = os.path.getsize(asset.path) / 2**20
    if size_mb == 0:
        return f"empty file: {asset.path}"
    if size_mb > cfg.max_file_mb:
        return f"asset too large: {size_mb:.0f} MB > max_file_mb {cfg.max_file_mb:g} (raise it in the render config)"
    return None


def render_task(source, out_dir: str, cfg: RenderConfig, task: int = 0, count: int = 1, num_workers: int = 1,
                blender_path: str | None = None, retry_failed: bool = False, fetch_batch: int = 64,
                progress: bool = True, allow_settings_change: bool = False) -> TaskSummary:
    """Renders this task's slice. Raises before rendering anything: ``RenderSettingsError`` (bad settings),
    :class:`AssetSelectionError` (nothing selected, or the selection is unusable), ``SettingsMismatchError``
    (``out_dir`` holds samples made with other settings, unless ``allow_settings_change``). An OSError while a shard
    is written (disk full) ends the task with the open shard cut back to its last complete sample: rerunning resumes."""
    cfg.validate()
    try:
        selected = source.assets()
    except (FileNotFoundError, ValueError) as exc:  # unknown uids or LVIS categories, two files with one id, ...
        raise AssetSelectionError(str(exc)) from exc
    if not selected:
        raise AssetSelectionError(_no_assets_message(source))
    assets = task_slice(selected, task, count, key=lambda a: a.uid)
    os.makedirs(out_dir, exist_ok=True)
    check_settings(out_dir, cfg.fingerprint(), allow_change=allow_settings_change)
    summary = TaskSummary(task, count, assigned=len(assets))
    cpus = len(os.sched_getaffinity(0))  # the CPUs this job may use (a SLURM allocation), not the node's
    threads = cfg.threads_per_worker or max(1, cpus // max(1, num_workers))
    writer = ShardWriter(out_dir, task, maxcount=cfg.shard_maxcount).open()
    skip = set(writer.done) | (set() if retry_failed else set(writer.failed))
    todo = [a for a in assets if a.uid not in skip]
    summary.already_done = len(assets) - len(todo)
    bar = tqdm(total=len(todo), desc=f"render task {task}", unit="obj", disable=not progress, file=sys.stderr)
    t0 = time.time()

    def fetched():
        """Batches of fetched assets; the next batch downloads in the background while this one renders."""
        batches = [todo[i:i + fetch_batch] for i in range(0, len(todo), fetch_batch)]
        with ThreadPoolExecutor(1, thread_name_prefix="lift3d-fetch") as pool:
            ahead = pool.submit(source.fetch, batches[0]) if batches else None
            for k in range(len(batches)):
                done = ahead.result()
                ahead = pool.submit(source.fetch, batches[k + 1]) if k + 1 < len(batches) else None
                yield done

    def jobs():
        for batch in fetched():
            for asset in batch:
                reason = _precheck(asset, cfg)
                if reason is not None:
                    writer.record_failure(asset.uid, reason, source=asset.source, path=asset.path)
                    summary.failed += 1
                    summary.failures.append((asset.uid, reason))
                    bar.update(1)
                    continue
                yield {"uid": asset.uid, "path": os.path.abspath(asset.path), "source": asset.source,
                       "licence": asset.licence, "sha256": asset.sha256(), "metadata": asset.metadata,
                       "rig": cfg.rig, "rig_options": cfg.rig_options, "depth_scale": cfg.depth_scale,
                       "allow_missing_textures": cfg.allow_missing_textures,
                       "settings": cfg.blender_settings(threads)}

    pool = WorkerPool(num_workers, writer.paths.log[: -len(".log")], timeout_s=cfg.timeout_s,
                      max_jobs=cfg.max_jobs_per_worker, blender_path=blender_path)
    try:
        with pool:
            for job, status, payload in pool.run(jobs()):
                if status == "ok":
                    try:
                        writer.write(payload["sample"], payload["record"])
                    except OSError as exc:
                        raise OSError(f"writing object {job['uid']} into {out_dir} failed: {exc}; the open "
                                      f"shard was cut back to its last complete sample, so running the same command "
                                      f"again (after fixing the cause) resumes there") from exc
                    summary.ok += 1
                    summary.views += payload["record"]["views"]
                    summary.worker_maxrss_mb = max(summary.worker_maxrss_mb, payload["record"]["worker_maxrss_mb"])
                else:
                    reason, excerpt = payload
                    writer.record_failure(job["uid"], reason, excerpt, source=job["source"], path=job["path"])
                    summary.failed += 1
                    summary.failures.append((job["uid"], reason))
                bar.update(1)
    finally:
        writer.close()
        bar.close()
        summary.worker_starts = pool.started_workers
    summary.seconds = time.time() - t0
    return summary
