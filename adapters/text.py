"""Text that can be tokenized and stored, checked where it enters.

JSON can spell a lone UTF-16 surrogate (`"\\ud800"`), which no tokenizer, UTF-8 encoder or
database accepts; found later, it would be a 500 far from its cause. Stored text must also be
free of NUL, which PostgreSQL's text type refuses. Both fail validation, naming the field, so
the server answers 400 for the parameter at fault.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"character {exc.start} is a lone UTF-16 surrogate, which is not "
            "valid Unicode text; send valid UTF-8"
        ) from None
    return text


def storable(text: str) -> str:
    if "\x00" in encodable(text):
        raise ValueError(
            f"character {text.index(chr(0))} is NUL (\\u0000), which cannot be stored; remove it"
        )
    return text


# Text that is tokenized or encoded (prompts, messages, stop strings).
Text = Annotated[str, AfterValidator(encodable)]
# Text that is also kept in the registry database (feedback, reasons, descriptions).
StoredText = Annotated[str, AfterValidator(storable)]
