"""`mmkd corpus ...` and `mmkd cache-teacher` / `mmkd cache ...`: stage one."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from mmkd import settings as st
from mmkd.cache.upgrade import upgrade_cache
from mmkd.cache.verify import cache_info, verify_cache
from mmkd.cache.writer import CacheConfig, build_cache
from mmkd.cli.common import data_dir_option, friendly
from mmkd.cli.options import assignments_argument, overrides, settings_epilog, settings_options
from mmkd.corpus import CorpusConfig, list_corpora, open_corpus, prepare_corpus
from mmkd.corpus_sources import PAPER_PAIRS, hub_corpora, opus_refs
from mmkd.paths import default_data_dir
from mmkd.settings import SEED_MAX


@click.group()
def corpus():
    """Prepare and list parallel corpora (English first: en-XX)."""


@corpus.command("prepare", epilog=settings_epilog(CorpusConfig, ("pair", "name"), "corpus"))
@click.argument("pair")
@click.option("--moses", nargs=2, type=click.Path(), metavar="EN_FILE X_FILE",
              help="Two line-aligned text files (OPUS Moses format), English first.")
@click.option("--tsv", type=click.Path(), metavar="FILE", help="One pair per line: en<TAB>x, no header.")
@click.option("--zip", "zip_", metavar="PATH_OR_URL",
              help="An OPUS Moses zip (e.g. Europarl de-en.txt.zip); a URL is downloaded once into "
                   "DATA_DIR/downloads/ (resumable).")
@click.option("--hf-dataset", metavar="NAME_OR_DIR",
              help="A Hugging Face dataset with a 'translation' column {en: ..., XX: ...}.")
@click.option("--name", default=None, help="Name of the prepared corpus (default: the pair).")
@click.option("--config", default=None, metavar="FILE", help="Settings file (JSON) for the preparation.")
@settings_options(CorpusConfig, ("pair", "name"))
@data_dir_option
@click.option("--overwrite", is_flag=True,
              help="Replace an existing prepared corpus of the same name (never a folder mmkd did not make).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@assignments_argument
@friendly
def corpus_prepare(pair, moses, tsv, zip_, hf_dataset, name, config, data_dir, overwrite, quiet, assignments, **given):
    """Filter, deduplicate, shuffle and prune one language pair PAIR (e.g. en-fr).

    With no source option the paper's OPUS corpus for PAIR is downloaded (Europarl, MultiUN,
    EUbookshop, IITB; see `mmkd corpus sources`), or with source=hub read from the hub's parquet
    mirrors at a pinned commit. The result is written to
    DATA_DIR/corpora/NAME/ (pairs.arrow + meta.json with the counts of what was dropped).
    """
    base = CorpusConfig(pair=pair, name=name, moses=tuple(moses) if moses else None, tsv=tsv, zip=zip_,
                        hf_dataset=hf_dataset, data_dir=data_dir or default_data_dir())
    cfg = st.load(CorpusConfig, config, {**overrides(given), **st.assignments(CorpusConfig, list(assignments), "corpus")},
                  base)
    out = prepare_corpus(cfg, progress=not quiet, overwrite=overwrite)
    meta = json.loads((out / "meta.json").read_text())
    click.echo(f"{out}: {meta['n_pairs']} pairs kept of {meta['read']} read; dropped {meta['dropped']}")


@corpus.command("list")
@data_dir_option
@friendly
def corpus_list(data_dir):
    """List prepared corpora."""
    data_dir = data_dir or default_data_dir()
    names = list_corpora(data_dir)
    if not names:
        click.echo(f"no prepared corpora in {data_dir}/corpora")
    for n in names:
        c = open_corpus(n, data_dir)
        click.echo(f"{n}\t{c.pair}\t{len(c)} pairs\t{c.fingerprint[:16]}")


@corpus.command("sources")
def corpus_sources():
    """Show the built-in sources of the paper's seven pairs: OPUS (the default) and the hub's parquet
    mirrors (`source=hub`), with the commit each is pinned to."""
    for pair in PAPER_PAIRS:
        for ref in opus_refs(pair):
            click.echo(f"{pair}\topus\t{ref.corpus} {ref.release}\t{ref.url()}")
        for hub in hub_corpora(pair):
            click.echo(f"{pair}\thub\t{hub.repo_id} {hub.config}\t{hub.revision}")


@click.command("cache-teacher", epilog=settings_epilog(CacheConfig, (), "cache-teacher"))
@click.option("--corpus", "corpora", multiple=True, required=True, metavar="NAME_OR_PATH",
              help="Prepared corpus (repeatable); each gets its own cache OUT/<name>/.")
@click.option("--teacher", default=None, metavar="NAME_OR_PATH",
              help="English teacher: hub id or local folder (transformers AutoModel); default bert-base-cased.")
@click.option("--out", default=None, metavar="DIR_OR_URL",
              help="Where caches are written: a folder or any fsspec URL Zarr accepts (default: cache).")
@click.option("--config", default=None, metavar="FILE", help="Settings file (JSON) for the cache.")
@settings_options(CacheConfig)
@click.option("--resume", is_flag=True, help="Keep complete shards, redo partial ones.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache at OUT/<name>/ (only mmkd's own files).")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the hub (off by default).")
@data_dir_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@assignments_argument
@friendly
def cache_teacher(corpora, teacher, out, config, resume, overwrite, trust_remote_code, data_dir, quiet, assignments,
                  **given):
    """Run the frozen teacher once over the English side and cache word and [CLS] states.

    Run it under `accelerate launch -m mmkd cache-teacher ...` to split the shards between
    processes/GPUs.
    """
    base = CacheConfig(corpora=list(corpora), data_dir=data_dir or default_data_dir(),
                       trust_remote_code=trust_remote_code)
    cfg = st.load(CacheConfig, config, {**overrides(given), **st.assignments(CacheConfig, list(assignments),
                                                                             "cache-teacher")}, base)
    paths = {k: v for k, v in (("teacher", teacher), ("out", out)) if v}
    if paths:
        cfg = dataclasses.replace(cfg, **paths)
    build_cache(cfg, resume=resume, overwrite=overwrite, progress=not quiet)


@click.group("cache")
def cache_group():
    """Inspect and check teacher caches."""


@cache_group.command("verify")
@click.argument("path")
@click.option("-k", "k", default=8, show_default=True, type=click.IntRange(min=0),
              help="Sentences to re-run through the teacher (0 = checksums only).")
@click.option("--teacher", default=None, metavar="NAME_OR_PATH",
              help="Teacher to re-run (default: the one named in the manifest).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0, max=SEED_MAX), help="Which sentences are re-run.")
@friendly
def cache_verify(path, k, teacher, seed):
    """Check the manifest, counts, every checksum, and k re-run sentences of the cache at PATH."""
    report = verify_cache(path, k=k, teacher=teacher, seed=seed)
    for p in report.problems:
        click.echo(f"FAIL {report.url}: {p}", err=True)
    if not report.ok:
        sys.exit(1)
    click.echo(f"OK {report.url}: {report.checked_files} files checksummed, {report.rerun_sentences} "
               f"sentences re-run (max relative error {report.max_rel_error:.2e})")


@cache_group.command("upgrade")
@click.argument("path")
@click.option("--corpus", default=None, metavar="NAME_OR_PATH",
              help="The prepared corpus the cache was made from (default: the one its manifest names).")
@click.option("--teacher", default=None, metavar="NAME_OR_PATH",
              help="Format 2 -> 3: the teacher the cache was made with, re-run on the stored text to add its mean "
                   "pooling (default: the one its manifest names; its hash must match).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the teacher's custom model code (off by default).")
@data_dir_option
@friendly
def cache_upgrade(path, corpus, teacher, trust_remote_code, data_dir):
    """Upgrade the cache at PATH in place to format 3. Format 1 -> 2 adds the pairs' text from the
    prepared corpus it was made from (checked against its fingerprint); format 2 -> 3 re-runs the
    teacher on that text to add its mean pooling (`senta.teacher_vector=mean`), after checking
    that it reproduces the stored [CLS] states. Existing tensors are not changed."""
    upgrade_cache(path, data_dir or default_data_dir(), corpus, log=click.echo, teacher=teacher,
                  trust_remote_code=trust_remote_code)


@cache_group.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def cache_info_cmd(path, as_json):
    """Print what the cache at PATH holds."""
    info = cache_info(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for key, val in info.items():
            click.echo(f"{key:>20}: {val}")


def register(main) -> None:
    for command in (corpus, cache_teacher, cache_group):
        main.add_command(command)
