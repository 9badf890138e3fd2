"""Rendering of measurement reports (Markdown for report files, aligned text for terminals).

Example::

    from modelscale.report import compare_markdown, profile_markdown, profile_text
    print(profile_text(profile(model, x)))
"""

from modelscale.report.tables import (
    compare_markdown,
    compare_text,
    human,
    profile_markdown,
    profile_text,
)

__all__ = ["compare_markdown", "compare_text", "human", "profile_markdown", "profile_text"]
