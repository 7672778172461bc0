"""The registry's HTTP API (v2) over TLS verified against the workspace CA."""

from __future__ import annotations

from pathlib import Path

from evc import pki
from evc.errors import EVCError


def served_certificate(address: str, timeout: float = 5) -> dict | None:
    """What the registry at ``address`` presents, unverified (for explaining TLS failures);
    None if it cannot be read."""
    import ssl

    host, _, port = address.rpartition(":")
    try:
        pem = ssl.get_server_certificate((host.strip("[]"), int(port)), timeout=timeout)
        return pki.certificate_info(pem.encode())
    except (OSError, ValueError):
        return None


class RegistryClient:
    """The registry HTTP API (v2) over TLS verified against the workspace CA."""

    MANIFEST_TYPES = ", ".join(
        [
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
        ]
    )

    def __init__(
        self, address: str, user: str | None, password: str | None, ca_file: Path, timeout=10
    ):
        """``user`` None: no credentials are sent (see :meth:`asks_for_credentials`)."""
        import requests

        self.base = f"https://{address}/v2/"
        self.session = requests.Session()
        # The workspace CA only: with trust_env, REQUESTS_CA_BUNDLE or a proxy from the
        # environment would override it (requests merges env settings over the session's).
        self.session.trust_env = False
        self.session.auth = (user, password) if user is not None else None
        self.verify = str(ca_file)
        self.timeout = timeout

    def _request(self, method: str, path: str, ok=(200,), missing_ok: bool = False, **kwargs):
        """One request; a transport failure or an unexpected status is an EVCError that
        names the method and path (404 is None when ``missing_ok``)."""
        import requests

        try:
            response = self.session.request(
                method, self.base + path, timeout=self.timeout, verify=self.verify, **kwargs
            )
        except requests.exceptions.SSLError as exc:
            raise EVCError(f"TLS to the registry {self.base} failed: {exc}") from None
        except requests.exceptions.RequestException as exc:
            raise EVCError(f"The registry {self.base} does not answer: {exc}") from None
        if response.status_code == 401 and 401 not in ok:
            raise EVCError(f"The registry {self.base} refused the credentials (401).")
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code not in ok:
            detail = " ".join(response.text.split())[:200]
            raise EVCError(
                f"The registry answered {method} /v2/{path} with HTTP {response.status_code}"
                + (f": {detail}" if detail else "")
            )
        return response

    def ping(self) -> None:
        self._request("GET", "")

    def asks_for_credentials(self) -> None:
        """/v2/ answers over verified TLS and refuses a request without credentials (401):
        how the controller checks an endpoint it holds no credential for."""
        self._request("GET", "", ok=(401,))

    def catalog(self) -> list[str]:
        response = self._request("GET", "_catalog", params={"n": 1000})
        return sorted(response.json().get("repositories") or [])

    def tags(self, repo: str) -> list[str]:
        response = self._request("GET", f"{repo}/tags/list", missing_ok=True)
        return sorted(response.json().get("tags") or []) if response is not None else []

    def manifest_digest(self, repo: str, tag: str) -> str | None:
        response = self._request(
            "HEAD", f"{repo}/manifests/{tag}", missing_ok=True,
            headers={"Accept": self.MANIFEST_TYPES},
        )  # fmt: skip
        return response.headers.get("Docker-Content-Digest") if response is not None else None

    def _manifest(self, repo: str, tag: str):
        """The response to GET of the manifest under ``tag`` (any kind), or None."""
        return self._request(
            "GET", f"{repo}/manifests/{tag}", missing_ok=True,
            headers={"Accept": self.MANIFEST_TYPES},
        )  # fmt: skip

    def manifest_descriptor(self, repo: str, tag: str) -> dict | None:
        """What an image index lists for the manifest under ``tag``: media type, digest,
        size (bytes of the manifest as stored), and its platform from the image config."""
        response = self._manifest(repo, tag)
        if response is None:
            return None
        manifest = response.json()
        config = self._request("GET", f"{repo}/blobs/{manifest['config']['digest']}").json()
        return {
            "mediaType": response.headers["Content-Type"].split(";")[0],
            "digest": response.headers["Docker-Content-Digest"],
            "size": len(response.content),
            "platform": {"architecture": config["architecture"], "os": config["os"]},
        }

    def put_manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        """PUT a manifest (an image index) under ``tag``; its digest."""
        response = self._request(
            "PUT", f"{repo}/manifests/{tag}", ok=(201,), data=body,
            headers={"Content-Type": media_type},
        )  # fmt: skip
        return response.headers["Docker-Content-Digest"]

    def tag(self, repo: str, digest: str, tag: str) -> None:
        """Put the manifest stored as ``digest`` under ``tag`` too, byte for byte (so its
        digest stays the same)."""
        response = self._manifest(repo, digest)
        if response is None:
            raise EVCError(f"the registry has no manifest {digest} in {repo}")
        self.put_manifest(
            repo, tag, response.content, response.headers["Content-Type"].split(";")[0]
        )

    def delete(self, repo: str, tag: str) -> bool:
        """Delete the manifest a tag points to; False if there was no such tag."""
        digest = self.manifest_digest(repo, tag)
        if digest is None:
            return False
        self._request("DELETE", f"{repo}/manifests/{digest}", ok=(202,))
        return True

    def image_size(self, repo: str, tag: str) -> int | None:
        """Bytes the registry stores for an image manifest: config plus layers."""
        response = self._manifest(repo, tag)
        if response is None:
            return None
        manifest = response.json()
        parts = [manifest.get("config") or {}, *(manifest.get("layers") or [])]
        return sum(int(p.get("size", 0)) for p in parts)
