"""A custom kernel's kernel.org sources for a bundle: the tarball pinned by sha256 (and,
for the Arch PKGBUILD, its signature), downloaded once into the layer cache or taken from
a local copy checked against the pin."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from synapse_os.errors import OperationError, UserError
from synapse_os.image.cache import LayerCache, layer_key
from synapse_os.image.progress import Progress
from synapse_os.models import sha256_file
from synapse_os.profile.model import Profile


def fetch_kernel_sources(profile: Profile, cache: LayerCache, progress: Progress,
                         local: Path | None = None, *, signature: bool = True) -> list[Path]:
    """The custom kernel's tarball (and, for the PKGBUILD, its signature) from kernel.org,
    downloaded once and kept by URL and pin, or the tarball from `local`; the tarball must
    have the sha256 the recipes pin."""
    from synapse_os.kernel.pkgbuild import source_tarball, tarball_sources

    if profile.kernel.source != "custom":
        return []
    sources = tarball_sources(*source_tarball(profile, None))
    out = []
    for url, sha in sources if signature else sources[:1]:
        name = url.rsplit("/", 1)[-1]
        final = cache.path("kernel-src", layer_key("kernel-src", {"url": url, "sha256": sha}),
                           suffix="") / name
        if not final.is_file():
            final.parent.mkdir(parents=True, exist_ok=True)
            part = final.with_name(name + ".part")
            if local is not None and sha is not None:
                if not local.is_file():
                    raise UserError(f"--kernel-tarball {local} is not a file; pass the "
                                    f"kernel's source tarball ({name})")
                if sha256_file(local) != sha:
                    raise UserError(f"--kernel-tarball {local} does not have the sha256 the "
                                    f"recipes pin for {name} ({sha}); pass that release's "
                                    "tarball, or pin this one's in kernel.tarball_sha256")
                with progress.step(f"copying {local} as {name}"):
                    shutil.copyfile(local, part)
            else:
                with progress.step(f"downloading {name} from kernel.org"), \
                        urllib.request.urlopen(url, timeout=60) as response, \
                        part.open("wb") as f:
                    shutil.copyfileobj(response, f, 1 << 20)
                if sha is not None and sha256_file(part) != sha:
                    part.unlink()
                    raise OperationError(f"{url} does not have the sha256 the recipes pin "
                                         f"({sha})")
            part.rename(final)
        out.append(final)
    return out
