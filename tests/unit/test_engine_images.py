"""Listing the engine's images while another process removes one (a lab shard's
`registry down --purge` beside another's), against the real Docker engine."""

from evc.engine import docker_client, list_images


def test_an_image_removed_mid_listing_does_not_fail_the_listing(tmp_path):
    client = docker_client()
    repo = "evc-test/gone-mid-listing"
    ids = []
    for tag in ("1", "2"):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "x").write_text(tag)
        (tmp_path / tag / "Dockerfile").write_text("FROM scratch\nCOPY x /x\n")
        ids.append(client.images.build(path=str(tmp_path / tag), tag=f"{repo}:{tag}")[0].id)
    listing = client.api.images

    def images_then_one_goes(**kw):  # the other process wins the race to `docker rmi`
        got = listing(**kw)
        client.images.remove(f"{repo}:2", force=True)
        return got

    client.api.images = images_then_one_goes
    try:
        listed = list_images(client, repo)
    finally:
        client.api.images = listing
        client.images.remove(f"{repo}:1", force=True)
    assert sorted(listed) == sorted([(ids[0], [f"{repo}:1"]), (ids[1], [f"{repo}:2"])])
