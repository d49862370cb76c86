#!/bin/bash
# before/after produce and fetch (catchup) on the same machine, alternating
set -x
cd "$(dirname "$0")/../../.."
export S3S_FS_BIN=$HOME/.cargo/bin/s3s-fs
B=${BEFORE_BIN:?the binary of the commit before (61d29a4)}
A=target/release/sidestream
for round in 1 2; do
  for which in before after; do
    bin=$B; [ $which = after ] && bin=$A
    ./target/release/sidestream-bench produce --targets sidestream --bin $bin --acks 1,all --rate 0 --duration-s 15 --name produce-$which-$round --out ${OUT:-/tmp/bench17} || echo FAILED
    ./target/release/sidestream-bench catchup --targets sidestream --bin $bin --history-mb 256 --duration-s 15 --name catchup-$which-$round --out ${OUT:-/tmp/bench17} || echo FAILED
  done
done
