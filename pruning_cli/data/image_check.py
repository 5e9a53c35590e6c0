"""Image folders as users have them, checked before any training: every class folder holds images, both splits have
the same classes, and every file's header decodes (an empty file, or one that is no image; a JPEG cut short after its
header is left to the loader). A file that fails is named in one line, or left out with
`dataset.skip_bad_images=true` (the class list never changes: it is the folders' names)."""

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from pruning_cli.errors import UserError

if TYPE_CHECKING:
    from torchvision import datasets

log = logging.getLogger(__name__)
SHOWN_FROM = 10_000  # files: a folder this large shows a progress bar while its headers are read
BATCH = 1024  # files a thread reads per task


@dataclass(frozen=True)
class FolderCheck:
    """`headers`: read every file's header before training (dataset.check_images); `skip_bad`: leave out the files
    that fail it instead of stopping (dataset.skip_bad_images)."""

    headers: bool = True
    skip_bad: bool = False


EVERY_FILE = FolderCheck()  # the default: every header read, the first unreadable file stops the run


def check_class_folders(split: Path, what: str) -> None:
    """A one-line error for a class folder of `split` without an image file (torchvision's error lists every
    class and extension at once)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    for folder in sorted(entry.path for entry in os.scandir(split) if entry.is_dir()):
        files = (name.lower() for _, _, names in os.walk(folder, followlinks=True) for name in names)
        if not any(file.endswith(IMG_EXTENSIONS) for file in files):  # ImageFolder's walk: subfolders count too
            raise UserError(
                f"{what} class folder {folder} holds no images ({', '.join(IMG_EXTENSIONS)}): add images to it or "
                "remove it"
            )


def check_same_classes(train: Path, val: Path, what: str) -> None:
    """A one-line error naming the classes one split has and the other lacks."""
    classes = {split: {entry.name for entry in os.scandir(split) if entry.is_dir()} for split in (train, val)}
    for split, other in ((train, val), (val, train)):
        missing = sorted(classes[other] - classes[split])
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise UserError(
                f"{what} folder {split} lacks the class folder(s) {shown} that {other} has: both splits need the "
                "same class folders"
            )


def header_problem(path: str) -> str | None:
    """Why the file at `path` cannot be read as an image, from its header only (fast): an empty file, or one that is
    no image, is caught; a JPEG cut short after its header is not (the loader names it when it reads it)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises many kinds for a damaged file: each is the file's fault
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}{': ' + reason if reason else ''}"
    return None


def unreadable(paths: Sequence[str], description: str) -> list[tuple[str, str]]:
    """The files of `paths` whose header does not decode, with why, in the order given: read in batches of
    BATCH files by a pool of threads (the file reads overlap), so that a million files are a thousand tasks."""
    batches = [paths[start : start + BATCH] for start in range(0, len(paths), BATCH)]
    workers = min(32, 4 * (os.cpu_count() or 1))
    found = []
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(paths), desc=description, unit="file", disable=len(paths) < SHOWN_FROM) as progress,
    ):
        for batch, problems in zip(batches, pool.map(_batch_problems, batches), strict=True):
            found += [(path, problem) for path, problem in zip(batch, problems, strict=True) if problem is not None]
            progress.update(len(batch))
    return found


def _batch_problems(paths: Sequence[str]) -> list[str | None]:
    return [header_problem(path) for path in paths]


def drop_unreadable(folder: "datasets.ImageFolder", check: FolderCheck) -> int:
    """Check `folder`'s files as `check` says; return how many were left out (UserError for the first one when
    they may not be)."""
    if not check.headers:
        return 0
    bad = unreadable([path for path, _ in folder.samples], f"checking {folder.root}")
    if not bad:
        return 0
    path, problem = bad[0]
    if not check.skip_bad:
        more = f" ({len(bad) - 1} more such files in {folder.root})" if len(bad) > 1 else ""
        raise UserError(
            f"image file {path} cannot be read ({problem}){more}: remove it, or set dataset.skip_bad_images=true to "
            "leave such files out"
        )
    left_out = {path for path, _ in bad}
    folder.samples = [sample for sample in folder.samples if sample[0] not in left_out]
    folder.imgs, folder.targets = folder.samples, [target for _, target in folder.samples]
    log.warning(f"left out {len(bad)} unreadable image file(s) of {folder.root}, e.g. {path} ({problem})")
    return len(bad)
