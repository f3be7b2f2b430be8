"""The columns a job writes: one row per input image, failed ones included."""

from __future__ import annotations

import pyarrow as pa

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # unique per input
        pa.field("path", pa.string()),  # where the image came from
        pa.field("prompt", pa.string()),  # the instruction the model got
        pa.field("text", pa.string()),  # generated answer; null when the row failed
        pa.field("method", pa.string()),
        pa.field("budget", pa.string()),  # as given: "0.2" (fraction) or "576" (tokens)
        pa.field("visual_tokens", pa.int32()),  # kept visual tokens, newlines not counted
        pa.field("sequence_tokens", pa.int32()),  # visual positions in the LLM input, newlines counted
        pa.field("available_tokens", pa.int32()),  # candidate patches before dropping
        pa.field("partition_budgets", pa.list_(pa.int32())),  # per partition, full image first
        pa.field("image_height", pa.int32()),
        pa.field("image_width", pa.int32()),
        pa.field("prompt_tokens", pa.int32()),  # LLM input length incl. visual tokens, no padding
        pa.field("generated_tokens", pa.int32()),
        pa.field("padding_fraction", pa.float32()),  # padding share of this row's LLM batch
        pa.field("decode_s", pa.float32()),  # image read + decode + preprocess
        pa.field("vision_s", pa.float32()),  # vision tower + dropping, per-image share of its batch
        pa.field("ttft_s", pa.float32()),  # LLM batch start to first token (prefill)
        pa.field("generate_s", pa.float32()),  # whole LLM batch: prefill + decode
        pa.field("pixel_bytes", pa.int64()),  # bytes of uint8 tiles sent from decode to the vision pool
        pa.field("feature_bytes", pa.int64()),  # bytes of kept features sent between pools
        pa.field("error", pa.string()),  # null when the row succeeded
    ]
)

OUTPUT_COLUMNS: tuple[str, ...] = tuple(OUTPUT_SCHEMA.names)

