"""File names in a command's output folder: one per input, never two the same, and what an
earlier run left there.

`yolov3 detect` writes one annotated picture per input, `yolov3 cam` several pictures per
input (`<stem>_eigencam.png`, `<stem>_det<k>_<class>_<method>.png`), and `yolov3 space` copies
its examples into one folder. Inputs from several folders often share names (two cameras'
`DCIM/IMG_0001.jpg`), so each input gets a name of its own (input_names):

1. its own name (detect, space: `IMG_0001.jpg`; cam: the stem `IMG_0001`) when no other
   input has the same one;
2. else the parent folders that tell the inputs sharing it apart, nearest first, are put in
   front (`a/DCIM/IMG_0001.jpg` and `b/DCIM/IMG_0001.jpg` -> `a_IMG_0001.jpg`, `b_IMG_0001.jpg`;
   the folders all of them share are left out);
3. (stems only) inputs in the same folder that differ only in their suffix keep it:
   `a.jpg`, `a.png` -> stems `a.jpg`, `a.png`;
4. any name still taken (by an earlier input or by the command's own files) gets `-2`, `-3`,
   ... before its suffix, in input order: the first keeps its name.

Names are compared as a case-insensitive file system does (Unicode NFC, then case-folded:
`A.jpg` and `a.jpg` are the same name on macOS and Windows), so a folder written on Linux
copies to those without losing a file. A name whose suffix is not an image suffix
(a file given by name, say `scan` or `photo.jpeg.bak`) gets `.png` added, the format
the picture is then written in.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from yolov3.data.sample import IMAGE_SUFFIXES, printable

# Characters no file name may hold on some system (Windows refuses the printable ones, every
# system the separators), control characters included: in a class name that goes into a file
# name they become "-".
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def name_key(name: str) -> str:
    """The name as a case-insensitive, normalising file system compares it."""
    return unicodedata.normalize("NFC", name).casefold()


def safe_part(text: str) -> str:
    """text usable inside a file name: separators, control and Windows-reserved characters
    become "-" (a class name "car/truck" -> "car-truck"); "" becomes "-"."""
    return _UNSAFE.sub("-", text) or "-"


def picture_name(path: Path) -> str:
    """The name an annotated copy of `path` is written under: its own name, with `.png` added
    when its suffix is not one of IMAGE_SUFFIXES (Pillow picks the format from the suffix)."""
    return path.name if path.suffix.lower() in IMAGE_SUFFIXES else f"{path.name}.png"


class OutputNames:
    """The names given out in one output folder; `claim` never gives the same (name_key) twice.

    reserved: the command's own files (detections.json, cam.json, contact_sheet.png).
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._taken = {name_key(n) for n in reserved}

    def claim(self, name: str, suffix: str | None = None) -> str:
        """name, or name with -2, -3, ... before its suffix (`suffix`, default Path(name).suffix)
        if taken; the result is taken from now on."""
        suffix = Path(name).suffix if suffix is None else suffix
        stem = name[: len(name) - len(suffix)] if suffix else name
        candidate, k = name, 1
        while name_key(candidate) in self._taken:
            k += 1
            candidate = f"{stem}-{k}{suffix}"
        self._taken.add(name_key(candidate))
        return candidate


def input_names(paths: Sequence[Path], label: Callable[[Path], str] = picture_name, stems: bool = False,
                reserved: Iterable[str] = ()) -> list[str]:
    """One distinct name per input, in order, by the rules of the module docstring.

    paths:    the inputs (different files: expand_sources has dropped repeats).
    label:    an input's own name (default picture_name; cam passes the stem).
    stems:    the labels are stems, so the suffix may tell two inputs apart (rule 3), and -2
              goes at the end (a stem has no suffix).
    reserved: names the result must not take (compared by name_key).
    """
    labels = [label(p) for p in paths]
    _apart_by_folders(paths, labels)
    if stems:
        for group in _groups(labels):
            suffixes = {name_key(paths[i].suffix) for i in group}
            if len(suffixes) == len(group):  # same folder, different suffixes
                for i in group:
                    labels[i] = labels[i] + paths[i].suffix
    taken = OutputNames(reserved)
    return [taken.claim(n, "" if stems else None) for n in labels]


def _groups(labels: Sequence[str]) -> list[list[int]]:
    """Indices of labels that share a name_key, groups of two or more."""
    by_key: dict[str, list[int]] = {}
    for i, n in enumerate(labels):
        by_key.setdefault(name_key(n), []).append(i)
    return [g for g in by_key.values() if len(g) > 1]


def _apart_by_folders(paths: Sequence[Path], labels: list[str]) -> None:
    """Rule 2, in place: for each group sharing a label, the fewest nearest parent folders
    that tell them apart (all, if none do), less those every member shares, go in front."""
    for group in _groups(labels):
        # nearest folder first; the absolute path, so `x.jpg` has the folder it is in
        chains = [[name for name in reversed(Path(os.path.abspath(paths[i])).parent.parts[1:])] for i in group]
        depth = max(len(c) for c in chains)
        pad = [c + [""] * (depth - len(c)) for c in chains]
        k = next((k for k in range(1, depth + 1) if len({tuple(map(name_key, c[:k])) for c in pad}) == len(group)),
                 depth)
        varying = [j for j in range(k) if len({name_key(c[j]) for c in pad}) > 1]
        for i, c in zip(group, pad):
            prefix = "_".join(c[j] for j in reversed(varying) if c[j])
            if prefix:
                labels[i] = f"{prefix}_{labels[i]}"


def listing(out: Path) -> list[str]:
    """The names in the folder `out` now ([] when it does not exist)."""
    return [p.name for p in out.iterdir()] if out.is_dir() else []


def left_from_before(there: Iterable[str], names: Iterable[str]) -> list[str]:
    """Of `names`, those among `there` (a folder's listing from before this run), compared as
    the file system may (name_key), sorted: files of an earlier run that this run replaces."""
    keys = {name_key(n) for n in there}
    return sorted(n for n in set(names) if name_key(n) in keys)


def describe_replaced(out: Path, replaced: Sequence[str], first: int = 5) -> str:
    """One line on the files of an earlier run this run replaces, naming the first few."""
    names = ", ".join(map(printable, replaced[:first])) + (f" and {len(replaced) - first} more"
                                                          if len(replaced) > first else "")
    return (f"{printable(str(out))}: {len(replaced)} file(s) of an earlier run are replaced: {names}; its other "
            f"files there are left as they were (use a new --out to keep runs apart)")
