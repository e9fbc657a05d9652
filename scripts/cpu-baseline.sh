# Sourced by the scripts that build. .cargo/config.toml builds x86_64 code for x86-64-v3 (AVX2,
# FMA, BMI2, ...); on an x86_64 CPU without those, build for the baseline instead: an empty
# RUSTFLAGS replaces the config's flags. A RUSTFLAGS the caller set is left alone.
if [ "$(uname -m)" = x86_64 ] && [ -z "${RUSTFLAGS+set}" ]; then
    for flag in avx avx2 bmi1 bmi2 f16c fma movbe xsave 'abm|lzcnt'; do
        if ! grep -qwE "$flag" /proc/cpuinfo; then
            echo "$(basename "$0"): this CPU lacks $flag: building for baseline x86-64 (slower encoder)" >&2
            export RUSTFLAGS=""
            break
        fi
    done
fi
