"""One finding vocabulary across datasets.

Every dataset names its findings its own way: VinDr-CXR "Pleural effusion",
CheXpert and MIMIC-CXR "Pleural Effusion", ChestX-ray14 "Effusion", PadChest
"pleural effusion".  :func:`harmonise` maps each native name to one canonical
name (CheXpert's capitalisation where CheXpert has the finding) and keeps the
native name beside it.  A native name that is not in the table keeps its own
name as its canonical one (never dropped) and is reported as *unmapped*.

Canonical names are not merged across different findings: ChestX-ray14's
"Mass" and "Nodule" stay two findings and VinDr's "Nodule/Mass" is a third,
because a model trained on one cannot be scored on the other as if equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# canonical name -> native spellings (compared after :func:`normalise`).
CANONICAL: dict[str, tuple[str, ...]] = {
    "No Finding": ("no finding", "normal", "no findings"),
    "Enlarged Cardiomediastinum": ("enlarged cardiomediastinum",),
    "Cardiomegaly": ("cardiomegaly",),
    "Lung Opacity": ("lung opacity", "airspace opacity"),
    "Lung Lesion": ("lung lesion",),
    "Edema": ("edema", "pulmonary edema", "oedema"),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia",),
    "Atelectasis": ("atelectasis",),
    "Pneumothorax": ("pneumothorax",),
    "Pleural Effusion": ("pleural effusion", "effusion"),
    "Pleural Other": ("pleural other",),
    "Fracture": ("fracture",),
    "Support Devices": ("support devices",),
    "Nodule/Mass": ("nodule/mass", "nodule mass", "nodule or mass"),
    "Nodule": ("nodule",),
    "Mass": ("mass",),
    "Emphysema": ("emphysema",),
    "Fibrosis": ("fibrosis", "pulmonary fibrosis"),
    "Pleural Thickening": ("pleural thickening", "pleural_thickening"),
    "Hernia": ("hernia", "hiatal hernia"),
    "Infiltration": ("infiltration", "infiltrates", "infiltrate"),
    "Aortic Enlargement": ("aortic enlargement",),
    "Calcification": ("calcification",),
    "Rib Fracture": ("rib fracture",),
    "Clavicle Fracture": ("clavicle fracture",),
    "Enlarged PA": ("enlarged pa", "pulmonary artery enlargement"),
    "ILD": ("ild", "interstitial lung disease"),
    "Lung Cavity": ("lung cavity", "cavitation"),
    "Lung Cyst": ("lung cyst",),
    "Mediastinal Shift": ("mediastinal shift",),
    "Other Lesion": ("other lesion",),
    "COPD": ("copd", "copd signs"),
    "Lung Tumor": ("lung tumor", "lung tumour"),
    "Tuberculosis": ("tuberculosis",),
    "Other Disease": ("other disease", "other diseases"),
}

_LOOKUP: dict[str, str] = {
    syn: canonical for canonical, syns in CANONICAL.items() for syn in syns
}


def normalise(native: str) -> str:
    """Lower case, underscores as spaces, single spaces, no surrounding blanks."""
    return re.sub(r"\s+", " ", str(native).replace("_", " ")).strip().lower()


def canonical_name(native: str) -> str | None:
    """The canonical name of ``native``, or None when the vocabulary does not know it."""
    return _LOOKUP.get(normalise(native))


@dataclass(frozen=True)
class FindingMap:
    """Findings of one dataset in column order: (canonical, native) pairs."""

    pairs: tuple[tuple[str, str], ...]
    unmapped: tuple[str, ...]

    @property
    def canonical(self) -> list[str]:
        return [c for c, _ in self.pairs]

    @property
    def native(self) -> list[str]:
        return [n for _, n in self.pairs]


def harmonise(natives: list[str]) -> FindingMap:
    """Canonical names for a dataset's native finding names, in the same order.

    Unknown names keep their own (stripped) spelling.  If two native names of
    one dataset would share a canonical name, the second keeps its native
    spelling, so no column is ever merged or lost.
    """
    pairs: list[tuple[str, str]] = []
    unmapped: list[str] = []
    used: set[str] = set()
    for native in natives:
        name = str(native).strip()
        canonical = canonical_name(name)
        if canonical is None or canonical in used:
            canonical = name
            unmapped.append(name)
        if canonical in used:  # two natives differing only in spacing/case
            canonical = f"{canonical} ({len(pairs)})"
        used.add(canonical)
        pairs.append((canonical, name))
    return FindingMap(tuple(pairs), tuple(unmapped))


__all__ = ["CANONICAL", "FindingMap", "canonical_name", "harmonise", "normalise"]
