"""The tests `make test-quick` leaves out: end-to-end runs and tests whose set-up alone (a trained project
copied, a Prefect server, a Dask cluster, detection scenes) takes seconds. `make test` runs them all.

Chosen from `pytest --durations=0` on 2 shared CPU cores: each test below took 8 s or more there (set-up
and call), or trains, serves or runs a flow end to end. What stays in the quick suite is every module's
unit tests and one tiny end-to-end run (tests/test_flow.py: pretrain, then transfer, registered in MLflow).
A test added anywhere is quick until it is listed here; a name listed here that no longer exists fails
the collection, so the list cannot rot silently.
"""

from __future__ import annotations

HEAVY: dict[str, tuple[str, ...]] = {
    "tests/test_export.py": (
        "test_a_registered_model_exports_from_the_command_line_into_its_runs_artifacts",
        "test_a_detector_exports_with_the_same_boxes",
        "test_the_demos_efficientnet_lite0_with_imagenet_weights_exports_within_1e_4",
        "test_the_registered_yolo_opens_in_ultralytics_with_its_names_and_adaptflows_boxes",
        "test_the_demos_yolo_validates_in_ultralytics_to_adaptflows_map50",
    ),
    "tests/test_text.py": (
        "test_text_run_killed_with_sigkill_resumes_to_the_same_model_then_registers_and_serves_strings",
        "test_adaptation_methods_train_a_text_model_on_the_pooled_embedding",
        "test_a_text_classifier_exports_to_onnx_and_torchscript_that_give_its_logits_on_token_ids",
    ),
    "tests/test_ui.py": ("test_the_served_ui_calls_the_api_on_the_chosen_port",),
    "tests/test_adapt.py": (
        "test_finetune_adapts_from_source_labels_and_unlabeled_target",
        "test_finetune_keeps_the_epoch_best_on_the_validation_set_or_by_a_validator",
    ),
    "tests/test_benchmark.py": (
        "test_a_strategy_run_with_labels_held_out_trains_on_the_rest_and_scores_them",
        "test_benchmark_flow_writes_the_report_and_logs_child_runs",
    ),
    "tests/test_cli.py": (
        "test_a_prefect_server_that_does_not_answer_stops_a_command_before_any_work",
        "test_an_mlflow_server_that_does_not_answer_stops_a_command_before_any_work",
        "test_stages_on_an_unfinished_run_folder_name_the_stage_to_run_first",
        "test_ui_serves_both_stores_in_a_few_processes_and_stops_them_all",
        "test_sigterm_during_a_run_stops_it_and_the_temporary_prefect_server_it_started",
        "test_a_run_that_fails_exits_6_with_its_traceback",
    ),
    "tests/test_data.py": (
        "test_full_build_is_deterministic_and_matches_committed_data_dvc",
        "test_versioning_pushes_to_the_remote_it_names",
        "test_versioning_to_a_remote_that_is_not_there_names_the_field_and_versions_nothing",
    ),
    "tests/test_ddp.py": (
        "test_two_cpu_workers_match_one_process_and_resume_after_a_crash",
        "test_backbone_phases_keep_the_workers_in_sync",
        "test_pretrain_publishes_what_two_workers_trained",
        "test_a_failing_worker_raises_its_message_and_publishes_nothing",
    ),
    "tests/test_detection.py": (
        "test_yolo_flows_register_a_detector_that_predicts_boxes_from_the_registry",
        "test_the_adapter_leaves_the_thread_count_of_later_processes_alone_and_keeps_its_files_in_the_cache",
        "test_faster_rcnn_pretrains_finetunes_and_is_measured_by_the_same_map",
        "test_ultralytics_asset_is_downloaded_cached_and_fine_tuned_with_a_new_head",
        "test_data_add_takes_yolo_folders_checks_them_first_and_names_by_content",
        "test_a_pseudo_label_split_written_again_replaces_the_first",
        "test_detector_self_training_trains_on_pseudo_labeled_target_images",
        "test_benchmark_flow_adds_the_detection_table_plot_and_child_runs",
    ),
    "tests/test_dvc_repro.py": (
        "test_repro_reproduces_the_flow_and_second_repro_is_a_no_op",
        "test_repro_reproduces_the_yolo_detection_flow",
        "test_repro_runs_the_imagenet_pipeline_with_a_target_domain_only",
    ),
    "tests/test_fetch.py": (
        "test_bad_uris_say_what_is_wrong",
        "test_torchvision_cache_entry_with_a_wrong_hash_is_refused",
    ),
    "tests/test_flow.py": (
        "test_flow_fails_before_training_when_the_pretrained_model_is_missing",
        "test_bad_input_fails_the_task_once_and_logs_its_message_without_a_traceback",
        "test_a_failed_or_interrupted_run_is_marked_so_in_mlflow",
        "test_pretraining_again_on_the_same_inputs_keeps_the_published_model",
    ),
    "tests/test_imagenet.py": (
        "test_torchvision_weights_offline_name_the_file_to_place_and_the_import_command",
        "test_torchvision_download_follows_the_published_layout_and_keeps_only_the_published_file",
        "test_fetch_from_a_file_imports_only_the_published_weights",
        "test_a_run_with_only_a_target_domain_fine_tunes_evaluates_and_registers",
        "test_source_free_adaptation_needs_no_labels_and_no_source_data",
        "test_methods_that_need_the_source_and_runs_that_cannot_learn_are_refused",
        "test_adaptflow_run_transfer_runs_with_a_target_domain_only",
    ),
    "tests/test_import.py": (
        "test_folders_of_another_layout_become_a_dataset_that_trains_and_registers_under_its_name",
        "test_a_wrong_split_mapping_says_how_to_write_it",
        "test_an_import_that_fails_its_check_leaves_nothing_behind",
    ),
    "tests/test_pixels.py": (
        "test_the_champion_served_larger_images_scores_them_as_evaluation_scored_their_files",
        "test_a_sixteen_bit_target_trains_registers_and_serves_its_raw_frames_as_evaluated",
    ),
    "tests/test_predict.py": (
        "test_predict_classifies_a_folder_with_the_champion_as_evaluation_did",
        "test_predict_names_what_is_wrong_with_its_input",
    ),
    "tests/test_registry.py": (
        "test_gate_refuses_an_unknown_metric",
        "test_champion_loads_from_models_uri_and_predicts_any_batch",
        "test_each_version_s_alias_tag_follows_the_alias",
        "test_min_delta_is_required_margin",
        "test_models_uri_resolves_to_the_registered_checkpoint",
        "test_promote_by_hand_and_roll_back",
        "test_registering_the_same_run_twice_creates_one_version",
        "test_registry_commands_show_aligned_versions_and_say_what_changed",
        "test_validation_metrics_gate_only_versions_that_held_out_the_same_images",
    ),
    "tests/test_sweep.py": (
        "test_a_gpu_pool_of_one_slot_keeps_two_trainings_apart",
        "test_a_sweep_picks_by_labeled_target_images_held_out_of_training",
        "test_benchmark_runs_its_grid_on_dask",
        "test_cli_refuses_a_bad_grid_before_prefect_starts",
        "test_sweep_on_a_local_dask_cluster_logs_child_runs_and_picks_without_target_labels",
    ),
    "tests/reliability/test_bad_inputs.py": (
        "test_bad_input_is_rejected_before_compute",
    ),
    "tests/reliability/test_concurrency_and_tracking.py": (
        "test_secrets_never_reach_logged_params",
        "test_four_concurrent_flow_runs_register_four_versions",
        "test_tracking_server_restarted_mid_run",
        "test_tracking_down_fails_clearly_keeps_the_run_and_replays_later",
        "test_concurrent_gates_on_a_tracking_server_leave_the_best_version_champion",
        "test_a_lease_left_by_a_killed_holder_expires",
    ),
    "tests/reliability/test_kill_resume.py": (
        "test_sigkill_at_random_points_then_rerun_gives_identical_metrics",
        "test_a_prefect_retry_resumes_the_finetune_task",
        "test_a_killed_run_s_mlflow_run_is_continued_or_closed_never_left_running",
    ),
    "tests/reliability/test_security.py": (
        "test_predict_with_a_pickled_model_file_is_one_line",
        "test_a_detection_image_linked_from_outside_is_refused",
        "test_a_malicious_ultralytics_asset_is_refused_and_never_runs_its_payload",
        "test_a_pickled_classifier_is_refused_by_validate_and_finetune_in_one_line",
        "test_a_pickled_detector_file_is_refused_by_validate_before_anything_runs",
        "test_allow_pickle_in_a_config_is_refused_unless_the_operator_allowed_it",
        "test_data_add_refuses_an_image_linked_from_outside_the_folder",
        "test_pretrain_output_outside_the_project_is_refused_before_anything_is_written",
        "test_ultralytics_own_dataset_layout_is_validated_loaded_added_to_and_trained_on",
    ),
    "tests/reliability/test_download_faults.py": (
        "test_a_passing_fault_is_retried_away",
        "test_a_persistent_fault_fails_clearly_and_caches_nothing",
    ),
}

