# Analysis and review stage: tables, dashboards, image grids and the text summary under
# results/report/, each its own rule (target one file alone). `snakemake --report report.html`
# assembles every output flagged with report() into one self-contained HTML file.

# Defaults of every report rule: a small local job (below), one thread, these resources (doubled
# per retry attempt), its log under logs/report/ and its benchmark under logs/benchmarks/report/.
REPORT_RESOURCES = {"mem_mb": scaled(2000), "runtime": scaled(10)}  # tables and pictures
REPORT_RESOURCES_SMALL = {"mem_mb": scaled(1000), "runtime": scaled(5)}  # selection, text, curves


localrules:
    report_selection,
    misprediction_cross_analysis,
    influential_training,
    class_influence,
    influence_stats,
    health_score,
    influence_report,
    dashboard,
    training_curves,
    class_dashboard,
    class_influence_heatmap,
    grid_mispredictions,
    grid_test_sample,
    grid_influential,
    grid_mislabel_candidates,
    training_influence,
    class_top_influences,
    confusion_pairs,
    recommendations,
    export_topk,
    export_test_summary,
    export_mislabel_ranking,
    class_gallery,
    grid_influence_magnitude,
    inspection_selection,
    inspection_page,
    review_report,


checkpoint report_selection:
    input:
        classes="results/data/classes.json",
        false_predictions="results/predictions/false_predictions.csv",
        predictions="results/predictions/predictions.parquet",
    output:
        "results/report/selection.json",
    log:
        "logs/report/report_selection.log",
    benchmark:
        "logs/benchmarks/report/report_selection.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES_SMALL,
    params:
        report=config["report"],
    script:
        "../workflow_scripts/report_selection.py"


rule misprediction_cross_analysis:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        topk="results/influence/topk.parquet",
    output:
        table="results/report/tables/misprediction_cross_analysis.parquet",
        table_csv=report(
            "results/report/tables/misprediction_cross_analysis.csv",
            caption="../report/misprediction_cross_analysis.rst",
            category="2. Mispredictions",
            labels={"item": "cross-reference"},
        ),
        summary="results/report/tables/misprediction_cross_summary.parquet",
        summary_csv=report(
            "results/report/tables/misprediction_cross_summary.csv",
            caption="../report/misprediction_cross_summary.rst",
            category="2. Mispredictions",
            labels={"item": "cross-reference summary"},
        ),
    log:
        "logs/report/misprediction_cross_analysis.log",
    benchmark:
        "logs/benchmarks/report/misprediction_cross_analysis.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    script:
        "../workflow_scripts/misprediction_cross_analysis.py"


rule influential_training:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        topk="results/influence/topk.parquet",
    output:
        table="results/report/tables/influential_training.parquet",
        csv=report(
            "results/report/tables/influential_training.csv",
            caption="../report/influential_training.rst",
            category="3. Influence",
            labels={"item": "most influential training samples (table)"},
        ),
    log:
        "logs/report/influential_training.log",
    benchmark:
        "logs/benchmarks/report/influential_training.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    script:
        "../workflow_scripts/influential_training.py"


rule class_influence:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        topk="results/influence/topk.parquet",
    output:
        table="results/report/tables/class_influence_matrix.parquet",
        csv=report(
            "results/report/tables/class_influence_matrix.csv",
            caption="../report/class_influence_matrix.rst",
            category="3. Influence",
            labels={"item": "class-to-class influence (table)"},
        ),
    log:
        "logs/report/class_influence.log",
    benchmark:
        "logs/benchmarks/report/class_influence.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    script:
        "../workflow_scripts/class_influence.py"


rule influence_stats:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        topk="results/influence/topk.parquet",
        summary="results/influence/test_summary.parquet",
        self_influence="results/influence/self_influence.parquet",
    output:
        table="results/report/tables/influence_stats.parquet",
        csv=report(
            "results/report/tables/influence_stats.csv",
            caption="../report/influence_stats.rst",
            category="3. Influence",
            labels={"item": "influence statistics (table)"},
        ),
    log:
        "logs/report/influence_stats.log",
    benchmark:
        "logs/benchmarks/report/influence_stats.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    script:
        "../workflow_scripts/influence_stats.py"


rule health_score:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        summary="results/influence/test_summary.parquet",
    output:
        table="results/report/tables/health_score.parquet",
        csv=report(
            "results/report/tables/health_score.csv",
            caption="../report/health_score.rst",
            category="1. Overview",
            labels={"item": "health score (table)"},
        ),
    log:
        "logs/report/health_score.log",
    benchmark:
        "logs/benchmarks/report/health_score.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES_SMALL,
    script:
        "../workflow_scripts/health_score.py"


rule influence_report:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        health="results/report/tables/health_score.parquet",
        cross_summary="results/report/tables/misprediction_cross_summary.parquet",
        influential="results/report/tables/influential_training.parquet",
        stats="results/report/tables/influence_stats.parquet",
        ranking="results/mislabel/ranking.parquet",
        mislabel_metrics="results/mislabel/mislabel_metrics.json",
        recommendations="results/report/tables/recommendations.parquet",
    output:
        report(
            "results/report/influence_report.txt",
            caption="../report/influence_report.rst",
            category="1. Overview",
            labels={"item": "text summary"},
        ),
    log:
        "logs/report/influence_report.log",
    benchmark:
        "logs/benchmarks/report/influence_report.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES_SMALL,
    script:
        "../workflow_scripts/influence_report.py"


rule dashboard:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        summary="results/influence/test_summary.parquet",
        influential="results/report/tables/influential_training.parquet",
        health="results/report/tables/health_score.parquet",
        cross_summary="results/report/tables/misprediction_cross_summary.parquet",
        matrix="results/report/tables/class_influence_matrix.parquet",
        mislabel_metrics="results/mislabel/mislabel_metrics.json",
        recommendations="results/report/tables/recommendations.parquet",
    output:
        report(
            "results/report/figures/dashboard.png",
            caption="../report/dashboard.rst",
            category="1. Overview",
            labels={"item": "overall dashboard"},
        ),
    log:
        "logs/report/dashboard.log",
    benchmark:
        "logs/benchmarks/report/dashboard.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    script:
        "../workflow_scripts/dashboard.py"


rule training_curves:
    input:
        "results/train/metrics.parquet",
    output:
        report(
            "results/report/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="1. Overview",
            labels={"item": "training curves"},
        ),
    log:
        "logs/report/training_curves.log",
    benchmark:
        "logs/benchmarks/report/training_curves.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES_SMALL,
    script:
        "../workflow_scripts/training_curves.py"


rule class_dashboard:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        summary="results/influence/test_summary.parquet",
        topk="results/influence/topk.parquet",
        health="results/report/tables/health_score.parquet",
        ranking="results/mislabel/ranking.parquet",
    output:
        report(
            "results/report/figures/classes/{cls}.png",
            caption="../report/class_dashboard.rst",
            category="5. Per class",
            labels={"class": "{cls}"},
        ),
    log:
        "logs/report/class_dashboard/{cls}.log",
    benchmark:
        "logs/benchmarks/report/class_dashboard/{cls}.tsv"
    wildcard_constraints:
        cls=r"[^/]+",
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    script:
        "../workflow_scripts/class_dashboard.py"


rule class_influence_heatmap:
    input:
        manifest="results/data/manifest.parquet",
        matrix="results/report/tables/class_influence_matrix.parquet",
    output:
        report(
            "results/report/figures/class_influence.png",
            caption="../report/class_influence_heatmap.rst",
            category="3. Influence",
            labels={"item": "class-to-class influence (heatmap)"},
        ),
    log:
        "logs/report/class_influence_heatmap.log",
    benchmark:
        "logs/benchmarks/report/class_influence_heatmap.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES_SMALL,
    script:
        "../workflow_scripts/class_influence_heatmap.py"


rule grid_mispredictions:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
    output:
        report(
            "results/report/grids/mispredictions.png",
            caption="../report/grid_mispredictions.rst",
            category="2. Mispredictions",
            labels={"item": "mispredicted test images"},
        ),
    log:
        "logs/report/grid_mispredictions.log",
    benchmark:
        "logs/benchmarks/report/grid_mispredictions.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    params:
        n=config["report"]["grid_images"],
        ncols=config["report"]["grid_columns"],
    script:
        "../workflow_scripts/grid_mispredictions.py"


rule grid_test_sample:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        topk="results/influence/topk.parquet",
    output:
        report(
            "results/report/grids/test_samples/test_{test_id}.png",
            caption="../report/grid_test_sample.rst",
            category="2. Mispredictions",
            labels={"item": "test sample {test_id}: proponents and opponents"},
        ),
    log:
        "logs/report/grid_test_sample/test_{test_id}.log",
    benchmark:
        "logs/benchmarks/report/grid_test_sample/test_{test_id}.tsv"
    wildcard_constraints:
        test_id=r"\d+",
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    params:
        n=config["report"]["neighbours"],
    script:
        "../workflow_scripts/grid_test_sample.py"


rule grid_influential:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        influential="results/report/tables/influential_training.parquet",
    output:
        report(
            "results/report/grids/most_influential.png",
            caption="../report/grid_influential.rst",
            category="3. Influence",
            labels={"item": "most helpful and harmful training images"},
        ),
    log:
        "logs/report/grid_influential.log",
    benchmark:
        "logs/benchmarks/report/grid_influential.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    params:
        n=config["report"]["neighbours"],
    script:
        "../workflow_scripts/grid_influential.py"


rule grid_mislabel_candidates:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        ranking="results/mislabel/ranking.parquet",
    output:
        report(
            "results/report/grids/mislabel_candidates.png",
            caption="../report/grid_mislabel_candidates.rst",
            category="4. Mislabel candidates",
            labels={"item": "top mislabel candidates"},
        ),
    log:
        "logs/report/grid_mislabel_candidates.log",
    benchmark:
        "logs/benchmarks/report/grid_mislabel_candidates.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    params:
        n=config["report"]["grid_images"],
        ncols=config["report"]["grid_columns"],
    script:
        "../workflow_scripts/grid_mislabel_candidates.py"


rule training_influence:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        train_summary="results/influence/train_summary.parquet",
    output:
        table="results/report/tables/training_influence.parquet",
        csv=report(
            "results/report/tables/training_influence.csv",
            caption="../report/training_influence.rst",
            category="3. Influence",
            labels={"item": "training samples by summed influence (table)"},
        ),
    log:
        "logs/report/training_influence.log",
    benchmark:
        "logs/benchmarks/report/training_influence.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    script:
        "../workflow_scripts/training_influence.py"


rule class_top_influences:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        topk="results/influence/topk.parquet",
    output:
        table="results/report/tables/class_top_influences.parquet",
        csv=report(
            "results/report/tables/class_top_influences.csv",
            caption="../report/class_top_influences.rst",
            category="5. Per class",
            labels={"class": "all", "item": "largest positive and negative influences per class (table)"},
        ),
    log:
        "logs/report/class_top_influences.log",
    benchmark:
        "logs/benchmarks/report/class_top_influences.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    params:
        n=config["report"]["neighbours"],
    script:
        "../workflow_scripts/class_top_influences.py"


rule confusion_pairs:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        topk="results/influence/topk.parquet",
    output:
        table="results/report/tables/confusion_pairs.parquet",
        csv=report(
            "results/report/tables/confusion_pairs.csv",
            caption="../report/confusion_pairs.rst",
            category="2. Mispredictions",
            labels={"item": "confusion pairs"},
        ),
    log:
        "logs/report/confusion_pairs.log",
    benchmark:
        "logs/benchmarks/report/confusion_pairs.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    params:
        n=config["report"]["neighbours"],
    script:
        "../workflow_scripts/confusion_pairs.py"


rule recommendations:
    input:
        health="results/report/tables/health_score.parquet",
        pairs="results/report/tables/confusion_pairs.parquet",
        training="results/report/tables/training_influence.parquet",
        ranking="results/mislabel/ranking.parquet",
    output:
        table="results/report/tables/recommendations.parquet",
        csv=report(
            "results/report/tables/recommendations.csv",
            caption="../report/recommendations.rst",
            category="1. Overview",
            labels={"item": "recommendations"},
        ),
    log:
        "logs/report/recommendations.log",
    benchmark:
        "logs/benchmarks/report/recommendations.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES_SMALL,
    params:
        budget=config["clean"]["budget"],
    script:
        "../workflow_scripts/recommendations.py"


# Plain CSV copies of core tables, for spreadsheets.
rule export_topk:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        topk="results/influence/topk.parquet",
    output:
        report(
            "results/report/tables/topk.csv",
            caption="../report/export_topk.rst",
            category="9. CSV exports",
            labels={"item": "top-k proponents and opponents"},
        ),
    log:
        "logs/report/export_topk.log",
    benchmark:
        "logs/benchmarks/report/export_topk.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    script:
        "../workflow_scripts/export_topk.py"


rule export_test_summary:
    input:
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        summary="results/influence/test_summary.parquet",
    output:
        report(
            "results/report/tables/test_summary.csv",
            caption="../report/export_test_summary.rst",
            category="9. CSV exports",
            labels={"item": "per-test-sample summary"},
        ),
    log:
        "logs/report/export_test_summary.log",
    benchmark:
        "logs/benchmarks/report/export_test_summary.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES_SMALL,
    script:
        "../workflow_scripts/export_test_summary.py"


rule export_mislabel_ranking:
    input:
        "results/mislabel/ranking.parquet",
    output:
        report(
            "results/report/tables/mislabel_ranking.csv",
            caption="../report/export_mislabel_ranking.rst",
            category="9. CSV exports",
            labels={"item": "full mislabel ranking"},
        ),
    log:
        "logs/report/export_mislabel_ranking.log",
    benchmark:
        "logs/benchmarks/report/export_mislabel_ranking.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES_SMALL,
    script:
        "../workflow_scripts/export_mislabel_ranking.py"


rule class_gallery:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        tops="results/report/tables/class_top_influences.parquet",
    output:
        picture=report(
            "results/report/grids/classes/{cls}.png",
            caption="../report/class_gallery.rst",
            category="5. Per class",
            labels={"class": "{cls}", "item": "gallery"},
        ),
        cells="results/report/grids/classes/{cls}.csv",
    log:
        "logs/report/class_gallery/{cls}.log",
    benchmark:
        "logs/benchmarks/report/class_gallery/{cls}.tsv"
    wildcard_constraints:
        cls=r"[^/]+",
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    params:
        ncols=max(1, config["report"]["neighbours"] // 2),
    script:
        "../workflow_scripts/class_gallery.py"


rule grid_influence_magnitude:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        training="results/report/tables/training_influence.parquet",
    output:
        picture=report(
            "results/report/grids/influence_magnitude.png",
            caption="../report/grid_influence_magnitude.rst",
            category="3. Influence",
            labels={"item": "most helpful and harmful training images by summed influence"},
        ),
        cells="results/report/grids/influence_magnitude.csv",
    log:
        "logs/report/grid_influence_magnitude.log",
    benchmark:
        "logs/benchmarks/report/grid_influence_magnitude.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    params:
        n=config["report"]["neighbours"],
    script:
        "../workflow_scripts/grid_influence_magnitude.py"


checkpoint inspection_selection:
    input:
        "results/report/tables/training_influence.parquet",
    output:
        "results/report/inspection.json",
    log:
        "logs/report/inspection_selection.log",
    benchmark:
        "logs/benchmarks/report/inspection_selection.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES_SMALL,
    params:
        n=config["report"]["inspect_samples"],
        chosen=config["report"]["train_samples"],
    script:
        "../workflow_scripts/inspection_selection.py"


rule inspection_page:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        predictions="results/predictions/predictions.parquet",
        training="results/report/tables/training_influence.parquet",
        topk="results/influence/topk.parquet",
    output:
        picture=report(
            "results/report/inspection/train_{train_id}.png",
            caption="../report/inspection_page.rst",
            category="3. Influence",
            labels={"item": "training sample {train_id}"},
        ),
        cells="results/report/inspection/train_{train_id}.csv",
    log:
        "logs/report/inspection_page/train_{train_id}.log",
    benchmark:
        "logs/benchmarks/report/inspection_page/train_{train_id}.tsv"
    wildcard_constraints:
        train_id=r"\d+",
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        **REPORT_RESOURCES,
    params:
        n=config["report"]["neighbours"],
    script:
        "../workflow_scripts/inspection_page.py"


# The whole report stage and nothing after it (cleaning, replay): `snakemake review_report`.
rule review_report:
    input:
        REPORT_OUTPUTS,
        class_dashboards,
        test_sample_grids,
        class_galleries,
        inspection_pages,
