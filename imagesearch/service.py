"""The search service: FastAPI over the saved collection and index, with the model loaded once.

`make serve` runs it (`uvicorn imagesearch.service:app`, on 127.0.0.1), on the
artifacts folder named by $IMAGESEARCH_ARTIFACTS (default `artifacts`), with
the model the index names (its saved `EmbedderInfo`: backbone and weights),
on the runtime $IMAGESEARCH_RUNTIME names (else auto). Every endpoint calls
the same functions as the notebooks and the CLI (`load_index`,
`search_image`, `search_indexed`, `thumbnail_jpeg`); nothing here searches
on its own.

Live updates: before each request the service looks at the index's metadata
file, which every save replaces atomically; when it has changed, the new
index is opened (memory-mapped where FAISS allows) and swapped in under a
lock. A request keeps the state it started with to the end, so none sees half
of a change. An index that cannot be opened (the collection moved on and the
index was not updated yet, or a file is damaged) leaves the service on the
state it has, and /health says why. A request that meets saved state it
cannot use (adding an image to embeddings of a newer format, say) gets a 503
whose detail is the error's one line.

Handlers are plain functions, which FastAPI runs in its thread pool: the
model and FAISS never block the event loop, and /health answers while
searches run.

Start-up: the model and index load in the app's lifespan. Where that raises a
`UserFacingError` (no index yet, a damaged one, weights that cannot be had),
uvicorn logs one line, `imagesearch service: cannot start: <what happened;
what to do>`, then its own "Application startup failed. Exiting.", and exits
with status 3: no traceback, and nothing on disk is touched. Anything else (a
bug) keeps its traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Header, HTTPException, Query, UploadFile
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image

from .ann import IndexSpecError, SearchParams
from .backbones import arguments_for
from .collection import load_embeddings, load_previous_embeddings, save_embeddings
from .display import thumbnail_jpeg
from .embedders import Embedder
from .errors import UserFacingError
from .extract import extract_embeddings
from .images import ImageLoadError, open_rgb
from .index import SearchIndex, build_index, load_index, load_previous_index, save_index
from .index_files import METADATA_FILE
from .query import search_image, search_indexed
from .runtimes import make_embedder
from .storage import FolderBusyError, atomic_path, embeddings_dir, exclusive, index_dir, one_line

#: What the one line a start-up failure logs begins with.
CANNOT_START = "imagesearch service: cannot start"
#: The most neighbours one request may ask for.
MAX_K = 100
#: The largest upload accepted, in bytes (a 24-megapixel JPEG is well under it).
MAX_UPLOAD_BYTES = 20 * 2**20
#: The web page the service serves at /.
PAGE = Path(__file__).with_name("static") / "index.html"
#: The environment variable whose value turns on adding and removing images, and must be presented to do so.
TOKEN_ENV = "IMAGESEARCH_TOKEN"
#: Where uploaded images go, under the collection's image folder; removed ones are moved under the artifacts.
UPLOADS, REMOVED = "uploads", "removed"
#: An image's id in a path: ids are int64, from 0.
ImageId = Annotated[int, PathParameter(ge=0, le=2**63 - 1, description="the image's id, as results give it")]
#: Search parameters a request may set, and the most each may be (nprobe: the index's lists, checked per index).
PARAMETER_LIMITS = {"efSearch": 4096, "k_factor": 64}
#: Search parameters for one request: FAISS' ParameterSpace syntax, bounded.
Params = Annotated[str | None, Query(max_length=100, description="search parameters, e.g. nprobe=32,k_factor=8 "
                                     "(an approximate index's; see /stats)")]
#: How many neighbours: a query parameter from 1 to MAX_K.
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many neighbours")]


@dataclass(frozen=True)
class Settings:
    """Where the service reads from, and how; `from_environment` reads the IMAGESEARCH_* variables.

    The model is the one the index names; `backbone` and `weights`, where
    given, must name that same one (`weights`: a model or weights file that
    has moved since the collection was embedded).
    """

    artifacts: Path
    backbone: str | None = None
    weights: str | None = None
    runtime: str | None = None  # None: $IMAGESEARCH_RUNTIME, else auto (for single queries)
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    token: str | None = None  # what POST and DELETE /images must present; None: changes are off

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(
            artifacts=Path(os.environ.get("IMAGESEARCH_ARTIFACTS", "artifacts")),
            token=os.environ.get(TOKEN_ENV) or None,
        )


@dataclass
class Service:
    """The model, and the index currently served, swapped for a newer one when a save lands."""

    settings: Settings
    search_index: SearchIndex = field(init=False)
    embedder: Embedder = field(init=False)
    stale: str | None = None  # why the newest index on disk is not the one served, if it is not
    _seen: tuple[int, int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changing: threading.Lock = field(default_factory=threading.Lock)  # one change at a time, in arrival order

    def __post_init__(self):
        self.search_index = load_index(index_dir(self.settings.artifacts))
        self._seen = self._stamp()
        backbone, weights, seed = arguments_for(self.search_index.embedder, self.settings.backbone,
                                                self.settings.weights)
        self.embedder = make_embedder(backbone, weights, seed, runtime=self.settings.runtime, purpose="query",
                                      images=self.search_index.image_root)
        width, height = self.embedder.info.input_size
        self.embedder.embed(np.zeros((1, height, width, 3), np.uint8))  # warm: the first search is not the slow one

    def current(self) -> SearchIndex:
        """The newest index that opens, loaded once per save; the caller keeps it for its whole request."""
        stamp = self._stamp()
        if stamp == self._seen:
            return self.search_index
        with self._lock:
            if stamp != self._seen:  # another request may have swapped meanwhile
                try:
                    self.search_index, self.stale = load_index(index_dir(self.settings.artifacts)), None
                except (UserFacingError, OSError) as error:  # keep serving what we have; /health says why
                    self.stale = str(error)
                self._seen = stamp
        return self.search_index

    def change(self, add: list[tuple[str, bytes]] = (), remove: list[int] = ()) -> dict:
        """Add uploaded images to the collection's folder, or move indexed ones out of it, then embed, save and
        update the index as `python -m imagesearch build` does; one change at a time. Returns the ids changed."""
        with self._changing:
            current = self.current()
            root = Path(current.image_root)
            written = []
            for name, data in add:
                path = root / UPLOADS / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    with atomic_path(path) as temporary:
                        temporary.write_bytes(data)
                written.append(path.relative_to(root).as_posix())
            removed = []
            for image_id in remove:
                relative = current.path_of(image_id)
                kept = _unused(self.settings.artifacts / REMOVED / relative)  # moved aside, never deleted
                kept.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(root / relative, kept)
                except FileNotFoundError:  # gone already: the extraction below sees it gone
                    pass
                removed.append(image_id)
            folder = embeddings_dir(self.settings.artifacts)
            embeddings = extract_embeddings(root, self.embedder, 32, previous=load_previous_embeddings(folder),
                                            progress=False, checkpoint_dir=folder)
            embeddings = save_embeddings(embeddings, folder)
            with exclusive(folder):
                previous = load_previous_index(index_dir(self.settings.artifacts), load_embeddings(folder))
                updated = build_index(embeddings, current.factory, previous=previous, retrieval=current.retrieval)
            save_index(updated, index_dir(self.settings.artifacts))
            served = self.current()
            return {"added": [served.id_of(path) for path in written], "removed": removed, "images": len(served)}

    def _stamp(self) -> tuple[int, int, int] | None:
        """Identifies one save of the index: every save replaces its metadata file (a new inode) atomically."""
        try:
            status = os.stat(index_dir(self.settings.artifacts) / METADATA_FILE)
        except OSError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; the model and index load when it starts (with `settings`, else from the environment)."""
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        holder["service"] = Service(settings or Settings.from_environment())
        yield
        holder.clear()

    app = FastAPI(
        title="imagesearch", lifespan=lifespan,
        description="Reverse image search over a saved collection: upload an image, get the nearest indexed images.",
    )
    app.add_middleware(OneLineStartupErrors)

    @app.exception_handler(UserFacingError)
    async def unavailable(_, error: UserFacingError) -> JSONResponse:
        """Saved state a request cannot use now (damaged, or of a newer format), where no handler says more: 503
        with the error's one line, which says what to do; searches go on with the index served."""
        return JSONResponse({"detail": one_line(error)}, status_code=503)

    def service() -> Service:
        return holder["service"]

    @app.get("/health")
    def health() -> dict:
        """Whether the service is up, and whether the index it serves is the newest one on disk."""
        current = service().current()
        return {"status": "ok" if service().stale is None else "stale", "images": len(current),
                "stale": service().stale}

    @app.get("/stats")
    def stats() -> dict:
        """The model, the index and the collection being served."""
        current = service().current()
        info, tuning = current.embedder, current.tuning
        version = current.collection
        return {
            "backbone": info.backbone, "weights": info.weights, "runtime": service().embedder.info.runtime,
            "collection_runtime": info.runtime, "dimension": info.dim, "metric": current.metric,
            "retrieval": str(current.retrieval),
            "index": current.factory, "exact": current.structure.exact, "images": len(current),
            "recall_at_10": tuning.recall if tuning is not None and not current.structure.exact else None,
            "collection_version": version.version if version else None,
            "committed": _modified(version.directory) if version else None,
        }

    @app.post("/search")
    def search(file: Annotated[UploadFile, File(description="the image to search with")], k: K = 5,
               params: Params = None) -> dict:
        """The k indexed images nearest to an uploaded image."""
        data = file.file.read(service().settings.max_upload_bytes + 1)
        if len(data) > service().settings.max_upload_bytes:
            raise HTTPException(413, f"the upload is over {service().settings.max_upload_bytes // 2**20} MiB")
        current = service().current()
        checked = _params(current, params)
        start = time.perf_counter()
        try:
            hits = search_image(current, service().embedder, data, k, params=checked)
        except ImageLoadError as error:
            raise HTTPException(415, str(error)) from None
        return _results(current, hits, start)

    @app.get("/", response_class=FileResponse, include_in_schema=False)
    def page() -> FileResponse:
        """The web page: search by dropping an image, browse the collection, add images with the token."""
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/images")
    def list_images(offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 60) -> dict:
        """A page of the indexed images, by path: ids and paths, and how many there are in all."""
        current = service().current()
        ids, paths = current.ids[offset : offset + limit], current.records.path_array[offset : offset + limit]
        return {"total": len(current),
                "images": [{"id": int(i), "path": path} for i, path in zip(ids.tolist(), paths.to_pylist())]}

    @app.get("/images/{image_id}/neighbours")
    def neighbours(image_id: ImageId, k: K = 5, params: Params = None) -> dict:
        """The k indexed images nearest to an indexed one (itself left out)."""
        current = service().current()
        checked = _params(current, params)
        start = time.perf_counter()
        return _results(current, search_indexed(current, _path(current, image_id), k, params=checked), start)

    @app.get("/images/{image_id}", response_class=FileResponse)
    def image(image_id: ImageId) -> FileResponse:
        """An indexed image's file, as stored."""
        current = service().current()
        path = Path(current.image_root) / _path(current, image_id)
        if not path.is_file():
            raise HTTPException(404, f"image {image_id} is indexed but its file is gone")
        return FileResponse(path)

    @app.get("/images/{image_id}/thumbnail")
    def thumbnail(image_id: ImageId, size: Annotated[int, Query(ge=16, le=512)] = 200) -> Response:
        """An indexed image scaled down to at most `size` pixels a side, as JPEG."""
        current = service().current()
        try:
            jpeg = thumbnail_jpeg(Path(current.image_root) / _path(current, image_id), size)
        except ImageLoadError as error:
            raise HTTPException(404, f"image {image_id} cannot be read now: {error}") from None
        return Response(jpeg, media_type="image/jpeg")

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        expected = service().settings.token
        if expected is None:
            raise HTTPException(403, f"adding and removing images is off: start the service with {TOKEN_ENV} set")
        if authorization is None:
            raise HTTPException(401, "this needs the service's token: send the header 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(403, "wrong token")

    @app.post("/images", dependencies=[Depends(authorised)])
    def add_images(files: Annotated[list[UploadFile], File(description="one or more images to add")]) -> dict:
        """Add images to the collection: each is checked, saved under uploads/ in the image folder, embedded and
        indexed; the answer has their ids. All or none: one bad file refuses the request."""
        uploads = []
        for upload in files:
            data = upload.file.read(service().settings.max_upload_bytes + 1)
            if len(data) > service().settings.max_upload_bytes:
                raise HTTPException(413, f"{upload.filename}: over {service().settings.max_upload_bytes // 2**20} MiB")
            try:
                open_rgb(data).close()  # decodes, as extraction will: what fails here would be skipped there
            except ImageLoadError as error:
                raise HTTPException(415, f"{upload.filename}: {error}") from None
            with Image.open(io.BytesIO(data)) as image:
                suffix = _SUFFIXES.get(image.format or "", ".img")
            uploads.append((hashlib.sha256(data).hexdigest()[:20] + suffix, data))
        return _changed(lambda: service().change(add=uploads))

    @app.delete("/images/{image_id}", dependencies=[Depends(authorised)])
    def remove_image(image_id: ImageId) -> dict:
        """Remove an image from the collection: its file is moved out of the image folder (to removed/ in the
        artifacts, not deleted), and the collection and index are updated."""
        _path(service().current(), image_id)  # 404 for an unknown id, before anything moves
        return _changed(lambda: service().change(remove=[image_id]))

    return app


class OneLineStartupErrors:
    """ASGI middleware: a `UserFacingError` raised while the app starts reaches the server as one line.

    Starlette reports a lifespan start-up that raised by sending the server
    "lifespan.startup.failed" with the formatted traceback as its message,
    which uvicorn logs before "Application startup failed. Exiting." (status
    3). It sends it from the `except` block that caught the error, the one
    `traceback.format_exc()` reads; so does this, to put `CANNOT_START: <the
    error's message>` in place of the traceback. Other exceptions, bugs, keep
    theirs; HTTP and shutdown pass through untouched.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_one_line(message) -> None:
            error = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(error, UserFacingError):
                message = {**message, "message": f"{CANNOT_START}: {one_line(error)}"}
            await send(message)

        await self.app(scope, receive, send_one_line)


#: File name endings for what Pillow says an upload is.
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def _changed(change) -> dict:
    try:
        return change()
    except FolderBusyError as error:
        raise HTTPException(409, f"another run is changing the collection now ({error}); try again") from None


def _params(current: SearchIndex, text: str | None) -> SearchParams | None:
    """A request's search parameters, checked against the index and PARAMETER_LIMITS; 422 with the reason if not."""
    if not text:
        return None
    try:
        params = SearchParams.parse(text)
        current.params.merged(params).check(current.structure)
    except IndexSpecError as error:
        raise HTTPException(422, str(error)) from None
    for name, most in PARAMETER_LIMITS.items():
        if (value := params.get(name)) is not None and value > most:
            raise HTTPException(422, f"{name}={value} is more than this service allows ({most})")
    return params


def _unused(path: Path) -> Path:
    """`path`, or `name.2.ext`, `name.3.ext`… where a file of that name was set aside before."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}.{number}{path.suffix}")
    return candidate


def _path(current: SearchIndex, image_id: int) -> str:
    try:
        return current.path_of(image_id)
    except KeyError:
        raise HTTPException(404, f"no image has id {image_id}") from None


def _results(current: SearchIndex, hits, start: float) -> dict:
    return {
        "results": [{"rank": hit.rank, "id": current.id_of(hit.path), "path": hit.path, "distance": hit.distance}
                    for hit in hits],
        "milliseconds": round((time.perf_counter() - start) * 1e3, 2),
    }


def _modified(directory: Path) -> str | None:
    from datetime import UTC, datetime

    try:
        seconds = max(path.stat().st_mtime for path in Path(directory).glob("manifest*.json"))
    except (OSError, ValueError):
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


#: What `uvicorn imagesearch.service:app` serves.
app = create_app()
