#!/usr/bin/env bash
# The main job on the embedded default: create a vault in a folder, register this machine,
# back up a sample tree, list the points, restore, and verify the restore byte for byte.
set -euo pipefail
work=${DEMO_DIR:-demo-run}
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)
export STRONGROOM_HOME="$work/home"
export STRONGROOM_PASSPHRASE=${STRONGROOM_PASSPHRASE:-"demo passphrase, change me"}

echo "== a sample tree in $work/data"
mkdir -p "$work/data/docs" "$work/data/empty"
for i in $(seq 1 50); do seq 1 $((i * 200)) > "$work/data/docs/report-$i.txt"; done
head -c 8000000 /dev/urandom > "$work/data/photo.raw"
ln -s docs/report-1.txt "$work/data/latest-report"

set -x
strongroom vault create "$work/vault"
strongroom vault credentials "$work/vault" --out "$work/vault.cred"
strongroom register --credentials "$work/vault.cred" --machine demo
strongroom backup "$work/data"
echo "one more line" >> "$work/data/docs/report-7.txt"
strongroom backup "$work/data"
strongroom points
strongroom ls latest "$work/data/docs/report-7.txt"
strongroom restore latest --target "$work/restored" --conflict overwrite
diff -r --no-dereference "$work/data" "$work/restored$work/data"
strongroom check --read-data
set +x
echo "== demo passed: the restored tree equals the source"
