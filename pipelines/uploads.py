"""Uploads as people send them: the image is the raw body (``curl --data-binary @photo.jpg``) or
the file part of a multipart/form-data form (``curl -F file=@photo.jpg``, a browser's form).

The gateway reads (and caps) the whole body first; a form is then parsed from those bytes with
Starlette's multipart parser (python-multipart), so the upload cap applies to either kind.
"""
from __future__ import annotations

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser


class FormError(ValueError):
    """A multipart body without a usable file part (the gateway answers 400)."""


def is_form(content_type: str | None) -> bool:
    return (content_type or "").lower().startswith("multipart/form-data")


async def image_bytes(headers: Headers, body: bytes) -> bytes:
    """The image in ``body``: the body itself, or the form's file part (field ``file``
    preferred, else the first file)."""
    if not is_form(headers.get("content-type")):
        return body

    async def stream():
        yield body
        yield b""

    try:
        form = await MultiPartParser(headers, stream(), max_files=4, max_fields=16).parse()
    except MultiPartException as exc:
        raise FormError(f"The multipart/form-data body could not be parsed ({exc}).") from exc
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    named = form.get("file")
    part = named if isinstance(named, UploadFile) else (files[0] if files else None)
    try:
        if part is None:
            raise FormError("The multipart/form-data body has no file part: send the image as "
                            "a file, e.g. curl -F file=@photo.jpg URL.")
        return await part.read()
    finally:
        await form.close()
