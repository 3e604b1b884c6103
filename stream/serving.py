"""Which models serve which languages: the serving plan read from the manifests, and the routing rule.

Faust-free, so the offline tools that classify (`socialpulse classify`) route posts as the worker does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from models.manifest import MANIFEST_FILE, Manifest, load_manifest
from stream.settings import Settings

log = logging.getLogger(__name__)


# A manifest that declares no languages predates the field: the English MiniLM builds, which the worker served
# as SOCIALPULSE_LANGUAGES' old default, ["en"]. Offline tools that classify with model_dir alone serve it too.
UNDECLARED_LANGUAGES = frozenset({"en"})
BUILD_MULTILINGUAL = "socialpulse models build --recipe multilingual"


class ServingError(ValueError):
    """The settings ask the worker to serve languages or models it does not have."""


@dataclass(frozen=True, slots=True)
class LanePlan:
    model_dir: Path
    manifest: Manifest
    # Routed here (the primary's declared languages; the second model's beyond those).
    languages: frozenset[str]


@dataclass(frozen=True, slots=True)
class ServingPlan:
    lanes: list[LanePlan]
    # What validation lets through; empty: every language (those no lane declares go to the last lane).
    served: frozenset[str]


def declared_languages(manifest: Manifest) -> frozenset[str]:
    return frozenset(manifest.languages) or UNDECLARED_LANGUAGES


def plan_serving(settings: Settings) -> ServingPlan:
    """Which models the worker loads and which languages it serves, from the manifests (cheap: JSON only).

    Refuses at start, before any model loads, what would otherwise dead-letter a whole language at run time.
    """
    primary = load_manifest(settings.model_dir)
    lanes = [LanePlan(settings.model_dir, primary, declared_languages(primary))]
    second_dir = settings.multilingual_model_dir
    if second_dir is not None and not (second_dir / MANIFEST_FILE).is_file():
        if "multilingual_model_dir" in settings.model_fields_set:
            raise ServingError(
                f"SOCIALPULSE_MULTILINGUAL_MODEL_DIR={second_dir} holds no {MANIFEST_FILE}: build it with "
                f"`{BUILD_MULTILINGUAL}`, or set it empty to serve {sorted(lanes[0].languages)} only"
            )
        log.warning(
            "no multilingual model at %s: serving %s only (build it with `%s`)",
            second_dir,
            sorted(lanes[0].languages),
            BUILD_MULTILINGUAL,
        )
    elif second_dir is not None and second_dir.resolve() != settings.model_dir.resolve():
        manifest = load_manifest(second_dir)
        extra = declared_languages(manifest) - lanes[0].languages
        if extra:
            lanes.append(LanePlan(second_dir, manifest, extra))
        else:
            log.warning("%s declares no language %s does not; not loaded", second_dir, settings.model_dir)
    declared = frozenset().union(*(lane.languages for lane in lanes))
    if settings.languages is None:
        return ServingPlan(lanes, declared)
    served = frozenset(settings.languages)
    if unserved := sorted(served - declared):
        raise ServingError(
            f"SOCIALPULSE_LANGUAGES names {unserved}, which no loaded model declares (they serve {sorted(declared)}"
            f"; `[]` lets every language through to {lanes[-1].manifest.name}, unvalidated)"
        )
    return ServingPlan(lanes, served)


class Serves(Protocol):
    @property
    def languages(self) -> frozenset[str]: ...


Served = TypeVar("Served", bound=Serves)


def route(lanes: Sequence[Served], language: str) -> Served:
    """The first lane that serves `language`; a language none declares (a low-confidence detection, or every
    language served) goes to the last lane, the multilingual model when there are two."""
    return next((lane for lane in lanes if language in lane.languages), lanes[-1])
