#!/usr/bin/env bash
# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
#
# Fetch the public code of the paper's peers into benchmarks/gpu/peers/ (git-ignored; never committed), at pinned
# commits, keeping only what the model benchmark imports (lib/) and the licence/readme files:
#
#   peers/TransFuse      github.com/Rayicer/TransFuse        the authors' TransFuse_S (lib/TransFuse.py)
#   peers/PraNet         github.com/DengPingFan/PraNet       PraNet (Res2Net-50; lib/PraNet_Res2Net.py)
#   peers/HarDNet-MSEG   github.com/james128333/HarDNet-MSEG HarDNet-MSEG (HarDNet-68; lib/HarDMSEG.py)
#
# Random weights only (the benchmark builds every model with pretrained=False): no checkpoint is downloaded.
#
#     bash benchmarks/gpu/fetch_peers.sh                        # from GitHub
#     bash benchmarks/gpu/fetch_peers.sh --mirror DIR           # from local git mirrors DIR/<owner>+<name>/repo
#
# A peer that cannot be fetched is reported and left out; the kit then skips it with a note in results.md.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="$HERE/peers"
MIRROR=""
if [[ "${1:-}" == "--mirror" ]]; then MIRROR="${2:?--mirror needs a folder}"; fi

# name  owner/repo  commit
PEERS=(
    "TransFuse Rayicer/TransFuse 3f50ab61cab7931ef8aefd6c9c0b2ba9b031ff76"
    "PraNet DengPingFan/PraNet 95f12bd4e32ec954b5069654abae7de9473fd1f5"
    "HarDNet-MSEG james128333/HarDNet-MSEG aac1c4b5d2fdbc80bc8fe21a5377af2d202a0348"
)

mkdir -p "$DEST"
failed=0
for entry in "${PEERS[@]}"; do
    read -r name repo commit <<<"$entry"
    if [[ -n "$MIRROR" ]]; then src="$MIRROR/${repo/\//+}/repo"; else src="https://github.com/$repo"; fi
    tmp="$(mktemp -d)"
    if git init -q "$tmp" && git -C "$tmp" fetch -q --depth 1 "$src" "$commit" 2>"$tmp.err"; then
        rm -rf "$DEST/$name" && mkdir -p "$DEST/$name"
        files=$(git -C "$tmp" ls-tree --name-only FETCH_HEAD | grep -E '^(lib|LICENSE.*|README.*)$' | tr '\n' ' ')
        # shellcheck disable=SC2086
        git -C "$tmp" archive FETCH_HEAD $files | tar -x -C "$DEST/$name"
        echo "$repo@$commit" >"$DEST/$name/SOURCE"
        echo "fetched $name ($repo@${commit:0:12}) -> $DEST/$name ($(du -sh "$DEST/$name" | cut -f1))"
    else
        echo "could not fetch $name from $src: $(tail -n 1 "$tmp.err")" >&2
        failed=$((failed + 1))
    fi
    rm -rf "$tmp" "$tmp.err"
done
du -sh "$DEST"
exit "$failed"
