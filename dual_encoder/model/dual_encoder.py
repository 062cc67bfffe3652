"""DualEncoder: two towers, two projection heads, a temperature and a contrastive train step.

The towers map raw inputs to features (images in 0..255 with the tower's own normalisation
inside; token dicts from the text preprocessor). Heads project both into one L2-normalised
space. The train step gathers embeddings across `tf.distribute` replicas so that every pair in
the global batch is a negative, and masks pairs that show the same image. Under a strategy one
step gives the loss, gradients and metrics of one device on the same global batch, also when the
last batch splits unevenly or leaves a replica without rows.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from dual_encoder import _compat
from dual_encoder.model import class_prior as _class_prior  # noqa: F401  (registers ClassPrior for loading)
from dual_encoder.model import losses
from dual_encoder.model.heads import FeatureDropout, ProjectionHead
from dual_encoder.model.replicas import gather_replicas, num_workers, replica_context, sum_replicas
from dual_encoder.towers import layers as _tower_layers  # noqa: F401  (registers the tower layers a model.keras holds)

_SERIALIZABLE = "dual_encoder"
SIGLIP_BIAS_INIT = -10.0  # SigLIP starts from a strongly negative bias (the paper's init)


def dense_gradients(gradients):
    """Embedding tables' gradients (IndexedSlices, one slice per token occurrence) as dense tensors.

    Keras' Adam squares an IndexedSlices gradient slice by slice, so a token seen k times in a
    batch gets the sum of k squares as its second moment instead of the square of its gradient
    (every position embedding row is seen once per caption). Dense, every weight follows Adam as
    written (and as PyTorch's dense embedding gradients do), and a step gives the same weights
    however the batch was split to compute it (GradCache's chunks, `_grad_cache_step`).
    """
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]


@keras.saving.register_keras_serializable(package=_SERIALIZABLE)
class DualEncoder(_compat.BuildsOptimizerInScope, keras.Model):
    """A CLIP-style image-text dual encoder.

    Batches are dicts: `images` (float32 [B, H, W, 3] in 0..255, already at `image_size`) or
    `image_features` (cached tower outputs), the text preprocessor's token dict under `tokens`
    or `text_features`, and `image_ids` (int64 [B]) telling which pairs share an image; with
    `caption_keys` (int64 [B], `data/caption_keys.py`) pairs with the same caption are not negatives either.

    `image_head_bias` / `text_head_bias`: whether each head's projection has a bias (CLIP's have
    none). `logit_bias`: SigLIP's starting bias; `logit_scale_max`: the clamp of the log scale
    (CLIP's ln 100; a checkpoint trained past it, as SigLIP's, keeps its own). `grad_cache_chunk`:
    run the towers N pairs at a time in the train step (GradCache, `_grad_cache_step`).
    `feature_dropout`: dropout on the tower features entering each head's own projection, in
    training only (the class prior's path is left whole, so the image side never loses its bridge).
    """

    def __init__(
        self,
        image_encoder,
        text_encoder,
        text_preprocessor=None,
        image_size=(224, 224),
        resize="squash",
        projection_dim=256,
        head="mlp",
        dropout=0.1,
        feature_dropout=0.0,
        logit_scale=losses.LOGIT_SCALE_INIT,
        learn_temperature=True,
        loss="infonce",
        class_prior=None,
        image_head_bias=True,
        text_head_bias=True,
        logit_bias=SIGLIP_BIAS_INIT,
        logit_scale_max=losses.LOGIT_SCALE_MAX,
        grad_cache_chunk=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.text_preprocessor = text_preprocessor
        self.image_size, self.resize = tuple(image_size), resize
        self.projection_dim, self.head, self.dropout_rate = projection_dim, head, dropout
        self.logit_scale_init, self.learn_temperature = float(logit_scale), learn_temperature
        self.loss_name, self.loss_fn = loss, losses.get_loss(loss)
        self.head_bias = {"image": bool(image_head_bias), "text": bool(text_head_bias)}
        self.image_head = ProjectionHead(projection_dim, head, dropout, use_bias=image_head_bias, name="image_head")
        self.text_head = ProjectionHead(projection_dim, head, dropout, use_bias=text_head_bias, name="text_head")
        # Made only when used: its seed state would otherwise be one more variable in every checkpoint.
        self.feature_dropout = FeatureDropout(feature_dropout, name="feature_dropout") if feature_dropout else None
        self.image_head.build((None, image_encoder.output_shape[-1]))
        self.text_head.build((None, text_encoder.output_shape[-1]))
        self.class_prior = class_prior
        if class_prior is not None:  # see class_prior.py: image = text_head(prior) + gate * image_head
            if not class_prior.built:
                class_prior.build((None, image_encoder.output_shape[-1]))
            self.image_head_gate = self.add_weight(name="image_head_gate", shape=(), initializer="zeros")
        self.logit_scale = self.add_weight(
            name="logit_scale", shape=(), initializer=keras.initializers.Constant(self.logit_scale_init),
            trainable=learn_temperature,
        )
        self.logit_scale_max, self.logit_bias_init = float(logit_scale_max), float(logit_bias)
        self.grad_cache_chunk = int(grad_cache_chunk) if grad_cache_chunk else None
        self.logit_bias = None
        if loss == "siglip":  # SigLIP starts from a strongly negative bias
            self.logit_bias = self.add_weight(name="logit_bias", shape=(), initializer=keras.initializers.Constant(logit_bias))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.i2t_accuracy = keras.metrics.Mean(name="i2t_accuracy")
        self.t2i_accuracy = keras.metrics.Mean(name="t2i_accuracy")
        self.built = True

    # --- embeddings -------------------------------------------------------------------
    def image_features(self, images, training=False):
        return self.image_encoder(images, training=training and self.image_encoder.trainable)

    def text_features(self, tokens, training=False):
        return self.text_encoder(tokens, training=training and self.text_encoder.trainable)

    def _drop_features(self, features, training):
        return self.feature_dropout(features, training=training) if self.feature_dropout is not None else features

    def embed_images(self, batch, training=False):
        features = batch["image_features"] if "image_features" in batch else self.image_features(batch["images"], training)
        if self.class_prior is None:
            return self.image_head(self._drop_features(features, training), training=training)
        # The prior lives in text-feature space, so the text head projects it; the image head's
        # own path starts switched off (gate 0) and opens as far as the captions justify.
        projected = self.text_head.project_features(self.class_prior(features), training) + tf.cast(
            self.image_head_gate, tf.float32) * self.image_head.project_features(self._drop_features(features, training),
                                                                                 training)
        return tf.math.l2_normalize(projected, axis=-1)

    def embed_texts(self, batch, training=False):
        features = batch["text_features"] if "text_features" in batch else self.text_features(batch["tokens"], training)
        return self.text_head(self._drop_features(features, training), training=training)

    def encode_texts(self, texts):
        """Raw strings -> embeddings, tokenizing with the model's own preprocessor."""
        return self.text_head(self.text_features(self.text_preprocessor(texts)))

    def call(self, inputs, training=False):
        out = {}
        if "images" in inputs or "image_features" in inputs:
            out["image_embeddings"] = self.embed_images(inputs, training)
        if "tokens" in inputs or "text_features" in inputs:
            out["text_embeddings"] = self.embed_texts(inputs, training)
        return out

    # --- temperature --------------------------------------------------------------------
    def scale(self):
        """The logit scale exp(t), clamped at 100 as in CLIP (or at a checkpoint's own larger scale)."""
        return tf.exp(tf.minimum(tf.convert_to_tensor(self.logit_scale), self.logit_scale_max))

    def _clamp_logit_scale(self):
        if self.learn_temperature:
            self.logit_scale.assign(tf.clip_by_value(self.logit_scale, 0.0, self.logit_scale_max))

    # --- training ---------------------------------------------------------------------
    @staticmethod
    def pair_keys(batch):
        """What the loss tells pairs apart by: the image ids [B], or [B, 2] with the caption keys."""
        if "caption_keys" not in batch:
            return batch["image_ids"]
        return tf.stack([batch["image_ids"], batch["caption_keys"]], axis=-1)

    def contrastive_loss(self, image_embeddings, text_embeddings, keys):
        """This replica's rows against the global batch; `keys`: `pair_keys(batch)`.

        Returns (loss, logits, labels, share): the losses average over this replica's rows, so
        `share` (its fraction of the global batch) weights it; summed over replicas, `share * loss`
        is the loss of the global batch on one device, however unevenly the batch was split.
        """
        (image_all, text_all), ids_all, offset, global_size = gather_replicas([image_embeddings, text_embeddings], keys)
        local_size = tf.shape(keys)[0]
        kwargs = {"bias": self.logit_bias} if self.logit_bias is not None else {}
        loss, logits_i2t, logits_t2i = self.loss_fn(
            image_embeddings, text_embeddings, image_all, text_all, keys, ids_all, offset, self.scale(), **kwargs
        )
        loss = tf.where(local_size > 0, loss, 0.0)  # a replica left without rows: the mean of nothing is NaN
        labels = tf.range(local_size) + offset
        share = tf.cast(local_size, tf.float32) / tf.cast(global_size, tf.float32)
        return loss, (logits_i2t, logits_t2i), labels, share

    def _step(self, batch, training):
        def embed():
            return self.embed_images(batch, training), self.embed_texts(batch, training)

        if replica_context() is None:
            image_embeddings, text_embeddings = embed()
        else:  # a replica may get no rows at the end of the data, and oneDNN's CPU Conv2D fails on those
            nothing = tf.zeros([0, self.projection_dim])
            image_embeddings, text_embeddings = tf.cond(tf.size(batch["image_ids"]) > 0, embed, lambda: (nothing, nothing))
        return self.contrastive_loss(image_embeddings, text_embeddings, self.pair_keys(batch))

    def _update_metrics(self, loss, logits, labels, share):
        """Updates every replica's metrics with the global batch's values, weighted by its pairs.

        Keras averages the replicas' results and reads the state summed over replicas; both
        then equal one device's, even for a partial last batch.
        """
        hits = [tf.reduce_sum(tf.cast(tf.equal(tf.argmax(d, axis=-1, output_type=labels.dtype), labels), tf.float32))
                for d in logits]
        local_size = tf.cast(tf.shape(labels)[0], tf.float32)
        global_loss, global_size, *global_hits = tf.unstack(sum_replicas(tf.stack([share * loss, local_size, *hits])))
        self.loss_tracker.update_state(global_loss, sample_weight=global_size)
        for metric, hit_count in zip((self.i2t_accuracy, self.t2i_accuracy), global_hits):
            metric.update_state(hit_count / global_size, sample_weight=global_size)
        logs = {**{m.name: m.result() for m in self.metrics}, "temperature": 1.0 / self.scale()}
        if num_workers(self.distribute_strategy) > 1:
            # Keras then reduces logs with strategy.reduce("MEAN", axis=0), which needs an axis
            # (tensorflow/tensorflow#72388); the mean of equal values is the value.
            logs = {name: value[None] for name, value in logs.items()}
        return logs

    def train_step(self, batch):
        if self.grad_cache_chunk:
            return self._grad_cache_step(batch)
        with tf.GradientTape() as tape:
            loss, logits, labels, share = self._step(batch, training=True)
            replica_loss = share * loss  # gradients are summed across replicas: the sum is the global loss
            replica_loss = self.optimizer.scale_loss(replica_loss)  # mixed_float16: the LossScaleOptimizer's scale
        variables = self.trainable_variables
        self.optimizer.apply(dense_gradients(tape.gradient(replica_loss, variables)), variables)
        self._clamp_logit_scale()
        return self._update_metrics(loss, logits, labels, share)

    # --- GradCache ------------------------------------------------------------------------
    def _grad_cache_step(self, batch):
        """The train step with the towers run `grad_cache_chunk` pairs at a time (GradCache, Gao et
        al. 2021): embed every chunk without keeping activations, take the loss of the whole batch
        (gathered across replicas as usual) and its gradient with respect to the embeddings, then
        run each chunk again with gradients and pull that gradient back through it. The gradient
        is the full batch's; memory is that of one chunk. Dropout must be off for the two passes to
        agree (their masks differ)."""
        ids = self.pair_keys(batch)
        inputs = {key: value for key, value in batch.items() if key not in ("image_ids", "caption_keys")}
        image_embeddings, text_embeddings = self._embed_in_chunks(inputs, tf.shape(ids)[0])
        loss_variables = [v for v in (self.logit_scale, self.logit_bias) if v is not None and v.trainable]
        with tf.GradientTape() as tape:
            tape.watch([image_embeddings, text_embeddings])
            loss, logits, labels, share = self.contrastive_loss(image_embeddings, text_embeddings, ids)
            replica_loss = self.optimizer.scale_loss(share * loss)
        d_image, d_text, *d_loss = tape.gradient(replica_loss, [image_embeddings, text_embeddings, *loss_variables])
        variables = self.trainable_variables
        gradients = self._chunk_gradients(inputs, d_image, d_text, variables)
        extra = {id(v): g for v, g in zip(loss_variables, d_loss) if g is not None}
        gradients = [g + extra[id(v)] if id(v) in extra else g for v, g in zip(variables, gradients)]
        self.optimizer.apply(gradients, variables)
        self._clamp_logit_scale()
        return self._update_metrics(loss, logits, labels, share)

    def _chunk_bounds(self, size):
        chunk = self.grad_cache_chunk
        return (size + chunk - 1) // chunk, chunk

    def _embed_in_chunks(self, inputs, size):
        """Both embeddings of the whole (replica's) batch, chunk by chunk, no gradient kept."""
        count, chunk = self._chunk_bounds(size)
        shape = tf.TensorShape([None, self.projection_dim])
        arrays = [tf.TensorArray(tf.float32, size=count, infer_shape=False, element_shape=shape) for _ in range(2)]

        def body(i, image_array, text_array):
            part = tf.nest.map_structure(lambda t: t[i * chunk : (i + 1) * chunk], inputs)
            image, text = self.embed_images(part, True), self.embed_texts(part, True)
            return i + 1, image_array.write(i, tf.stop_gradient(image)), text_array.write(i, tf.stop_gradient(text))

        _, image_array, text_array = tf.while_loop(lambda i, *_: i < count, body, [tf.constant(0), *arrays])
        return image_array.concat(), text_array.concat()

    def _chunk_gradients(self, inputs, d_image, d_text, variables):
        """Sum over chunks of (d loss / d embeddings) . (d embeddings / d variables), chunk by chunk."""
        count, chunk = self._chunk_bounds(tf.shape(d_image)[0])

        def body(i, *sums):
            part = tf.nest.map_structure(lambda t: t[i * chunk : (i + 1) * chunk], inputs)
            with tf.GradientTape() as tape:
                image, text = self.embed_images(part, True), self.embed_texts(part, True)
                surrogate = (tf.reduce_sum(image * d_image[i * chunk : (i + 1) * chunk])
                             + tf.reduce_sum(text * d_text[i * chunk : (i + 1) * chunk]))
            grads = tape.gradient(surrogate, variables)  # None for the temperature and bias, used by the loss only
            return (i + 1, *[total if g is None else total + tf.convert_to_tensor(g) for total, g in zip(sums, grads)])

        zeros = [tf.zeros(v.shape, v.dtype) for v in variables]
        _, *sums = tf.while_loop(lambda i, *_: i < count, body, [tf.constant(0), *zeros])
        return sums

    def test_step(self, batch):
        logs = self._update_metrics(*self._step(batch, training=False))
        logs.pop("temperature")  # a weight, not a validation result: logged once, by train_step
        return logs

    def build_optimizer(self):
        """Builds the optimizer under the model's strategy (the model's variables are made in
        `__init__`); Keras' symbolic pass would fail under a strategy (see `_compat`)."""
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return [self.loss_tracker, self.i2t_accuracy, self.t2i_accuracy]

    # --- serialisation -------------------------------------------------------------------
    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "image_encoder": serialize(self.image_encoder),
            "text_encoder": serialize(self.text_encoder),
            "text_preprocessor": serialize(self.text_preprocessor) if self.text_preprocessor is not None else None,
            "image_size": list(self.image_size),
            "resize": self.resize,
            "projection_dim": self.projection_dim,
            "head": self.head,
            "dropout": self.dropout_rate,
            "feature_dropout": self.feature_dropout.rate if self.feature_dropout is not None else 0.0,
            "logit_scale": self.logit_scale_init,
            "learn_temperature": self.learn_temperature,
            "loss": self.loss_name,
            "class_prior": serialize(self.class_prior) if self.class_prior is not None else None,
            "image_head_bias": self.head_bias["image"],
            "text_head_bias": self.head_bias["text"],
            "logit_bias": self.logit_bias_init,
            "logit_scale_max": self.logit_scale_max,
            "grad_cache_chunk": self.grad_cache_chunk,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("image_encoder", "text_encoder", "text_preprocessor", "class_prior"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
