"""A space of one's own, registered through $MANIFPT_PLUGINS: 2 x 2 average-pooled pixels."""

from fingerprint_core import spaces


class PooledSpace(spaces.Space):
    name = "pool2"

    def _embed_batch(self, x):
        import torch.nn.functional as F

        return F.avg_pool2d(x.float() / 255, 2).reshape(len(x), -1)

    def dim(self, image_shape):
        c, h, w = image_shape
        return c * (h // 2) * (w // 2)

    def preprocessing(self):
        return {"input": "uint8 codes / 255", "pool": "2 x 2 average"}


if "pool2" not in spaces.names():
    spaces.register("pool2", PooledSpace, summary="2 x 2 average-pooled pixels (a test plugin)")
