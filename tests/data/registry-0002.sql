-- A vitmed registry at schema revision 0002 (run owner and heartbeat), for upgrade tests.
BEGIN TRANSACTION;
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO "alembic_version" VALUES('0002');
CREATE TABLE checkpoints (
	id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	init VARCHAR(64) NOT NULL, 
	arch VARCHAR(128) NOT NULL, 
	path TEXT, 
	sha256 VARCHAR(64) NOT NULL, 
	source VARCHAR(16) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	run_id INTEGER, 
	epoch INTEGER, 
	n_params BIGINT, 
	image_size INTEGER, 
	findings JSON, 
	meta JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_checkpoints PRIMARY KEY (id), 
	CONSTRAINT ck_checkpoints_source CHECK (source IN ('file', 'hub-cache', 'run', 'random')), 
	CONSTRAINT fk_checkpoints_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE, 
	CONSTRAINT uq_checkpoints_sha256_arch_role UNIQUE (sha256, arch, role)
);
INSERT INTO "checkpoints" VALUES(1,'dino','dinov2','vit_small_patch14_dinov2','/w/dino.pth','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','file','init',NULL,NULL,NULL,NULL,NULL,'{}','2026-11-29 17:30:20.831807');
INSERT INTO "checkpoints" VALUES(2,'run-best','run','vit_small_patch14_dinov2',NULL,'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','run','best',1,1,NULL,NULL,NULL,'{}','2026-11-29 17:30:20.836906');
CREATE TABLE comparison_results (
	id INTEGER NOT NULL, 
	comparison_id INTEGER NOT NULL, 
	finding VARCHAR(128) NOT NULL, 
	auc_a FLOAT, 
	auc_b FLOAT, 
	diff FLOAT, 
	ci_low FLOAT, 
	ci_high FLOAT, 
	p_value FLOAT, 
	p_delong FLOAT, 
	p_adjusted FLOAT, 
	n_positive INTEGER, 
	n_negative INTEGER, 
	n_degenerate INTEGER, 
	CONSTRAINT pk_comparison_results PRIMARY KEY (id), 
	CONSTRAINT fk_comparison_results_comparison_id_comparisons FOREIGN KEY(comparison_id) REFERENCES comparisons (id) ON DELETE CASCADE, 
	CONSTRAINT uq_comparison_results_comparison_id_finding UNIQUE (comparison_id, finding)
);
INSERT INTO "comparison_results" VALUES(1,1,'__macro__',NULL,NULL,0.1,NULL,NULL,0.5,NULL,NULL,NULL,NULL,NULL);
CREATE TABLE comparisons (
	id INTEGER NOT NULL, 
	dataset_id INTEGER NOT NULL, 
	evaluation_a_id INTEGER NOT NULL, 
	evaluation_b_id INTEGER NOT NULL, 
	label_a VARCHAR(128) NOT NULL, 
	label_b VARCHAR(128) NOT NULL, 
	group_id VARCHAR(64), 
	n_images INTEGER NOT NULL, 
	n_resamples INTEGER NOT NULL, 
	seed INTEGER NOT NULL, 
	options JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_comparisons PRIMARY KEY (id), 
	CONSTRAINT fk_comparisons_dataset_id_datasets FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE RESTRICT, 
	CONSTRAINT fk_comparisons_evaluation_a_id_evaluations FOREIGN KEY(evaluation_a_id) REFERENCES evaluations (id) ON DELETE CASCADE, 
	CONSTRAINT fk_comparisons_evaluation_b_id_evaluations FOREIGN KEY(evaluation_b_id) REFERENCES evaluations (id) ON DELETE CASCADE
);
INSERT INTO "comparisons" VALUES(1,1,1,2,'dinov2','other',NULL,1,10,0,'{}','2026-11-29 17:30:20.840846');
CREATE TABLE datasets (
	id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	format VARCHAR(32) NOT NULL, 
	source_path TEXT NOT NULL, 
	image_size INTEGER NOT NULL, 
	cache_path TEXT, 
	has_patient_ids BOOLEAN NOT NULL, 
	label_policy VARCHAR(32), 
	options JSON NOT NULL, 
	notes TEXT, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_datasets PRIMARY KEY (id), 
	CONSTRAINT uq_datasets_name UNIQUE (name)
);
INSERT INTO "datasets" VALUES(1,'toy','csv','/data/toy',32,NULL,1,NULL,'{}',NULL,'2026-11-29 17:30:20.823420');
CREATE TABLE epoch_metrics (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	epoch INTEGER NOT NULL, 
	train_loss FLOAT, 
	val_loss FLOAT, 
	val_macro_auc FLOAT, 
	val_auc JSON NOT NULL, 
	lr FLOAT, 
	seconds FLOAT, 
	images_per_second FLOAT, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_epoch_metrics PRIMARY KEY (id), 
	CONSTRAINT fk_epoch_metrics_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE, 
	CONSTRAINT uq_epoch_metrics_run_id_epoch UNIQUE (run_id, epoch)
);
INSERT INTO "epoch_metrics" VALUES(1,1,1,0.5,NULL,0.7,'{"Cardiomegaly": 0.7}',NULL,NULL,NULL,'2026-11-29 17:30:20.838094');
CREATE TABLE evaluation_metrics (
	id INTEGER NOT NULL, 
	evaluation_id INTEGER NOT NULL, 
	finding VARCHAR(128) NOT NULL, 
	auc FLOAT, 
	threshold FLOAT, 
	sensitivity FLOAT, 
	specificity FLOAT, 
	accuracy FLOAT, 
	n_positive INTEGER NOT NULL, 
	n_negative INTEGER NOT NULL, 
	CONSTRAINT pk_evaluation_metrics PRIMARY KEY (id), 
	CONSTRAINT fk_evaluation_metrics_evaluation_id_evaluations FOREIGN KEY(evaluation_id) REFERENCES evaluations (id) ON DELETE CASCADE, 
	CONSTRAINT uq_evaluation_metrics_evaluation_id_finding UNIQUE (evaluation_id, finding)
);
CREATE TABLE evaluations (
	id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	source VARCHAR(16) NOT NULL, 
	run_id INTEGER, 
	checkpoint_id INTEGER, 
	dataset_id INTEGER NOT NULL, 
	split_id INTEGER, 
	part VARCHAR(8) NOT NULL, 
	init_name VARCHAR(64), 
	n_images INTEGER NOT NULL, 
	macro_auc FLOAT, 
	skipped_findings JSON NOT NULL, 
	uncertain_policy VARCHAR(16), 
	config JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_evaluations PRIMARY KEY (id), 
	CONSTRAINT ck_evaluations_part CHECK (part IN ('train', 'val', 'test')), 
	CONSTRAINT ck_evaluations_source CHECK (source IN ('predict', 'import')), 
	CONSTRAINT fk_evaluations_checkpoint_id_checkpoints FOREIGN KEY(checkpoint_id) REFERENCES checkpoints (id) ON DELETE SET NULL, 
	CONSTRAINT fk_evaluations_dataset_id_datasets FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE RESTRICT, 
	CONSTRAINT fk_evaluations_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE, 
	CONSTRAINT fk_evaluations_split_id_splits FOREIGN KEY(split_id) REFERENCES splits (id) ON DELETE RESTRICT
);
INSERT INTO "evaluations" VALUES(1,'a','predict',1,NULL,1,1,'test','dinov2',1,NULL,'[]',NULL,'{}','2026-11-29 17:30:20.839254');
INSERT INTO "evaluations" VALUES(2,'b','import',NULL,NULL,1,1,'test','other',1,NULL,'[]',NULL,'{}','2026-11-29 17:30:20.839258');
CREATE TABLE findings (
	id INTEGER NOT NULL, 
	dataset_id INTEGER NOT NULL, 
	canonical VARCHAR(128) NOT NULL, 
	native VARCHAR(256) NOT NULL, 
	position INTEGER NOT NULL, 
	CONSTRAINT pk_findings PRIMARY KEY (id), 
	CONSTRAINT fk_findings_dataset_id_datasets FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE, 
	CONSTRAINT uq_findings_dataset_id_canonical UNIQUE (dataset_id, canonical)
);
INSERT INTO "findings" VALUES(1,1,'Cardiomegaly','cardiomegaly',0);
INSERT INTO "findings" VALUES(2,1,'Pleural Effusion','Effusion',1);
CREATE TABLE images (
	id INTEGER NOT NULL, 
	dataset_id INTEGER NOT NULL, 
	"key" VARCHAR(512) NOT NULL, 
	patient_id VARCHAR(128), 
	study_id VARCHAR(128), 
	"view" VARCHAR(16) NOT NULL, 
	view_native VARCHAR(64), 
	sex VARCHAR(16), 
	age FLOAT, 
	source_path TEXT NOT NULL, 
	official_part VARCHAR(8), 
	cache_index INTEGER, 
	readable BOOLEAN, 
	error TEXT, 
	CONSTRAINT pk_images PRIMARY KEY (id), 
	CONSTRAINT ck_images_official_part CHECK (official_part IS NULL OR official_part IN ('train', 'val', 'test')), 
	CONSTRAINT ck_images_view CHECK (view IN ('frontal', 'lateral', 'unknown')), 
	CONSTRAINT fk_images_dataset_id_datasets FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE, 
	CONSTRAINT uq_images_dataset_id_key UNIQUE (dataset_id, "key")
);
INSERT INTO "images" VALUES(1,1,'img0','p0',NULL,'frontal',NULL,NULL,NULL,'/data/toy/img0.png',NULL,0,1,NULL);
INSERT INTO "images" VALUES(2,1,'img1','p1',NULL,'frontal',NULL,NULL,NULL,'/data/toy/img1.png',NULL,1,1,NULL);
CREATE TABLE labels (
	image_id INTEGER NOT NULL, 
	finding_id INTEGER NOT NULL, 
	value SMALLINT NOT NULL, 
	CONSTRAINT pk_labels PRIMARY KEY (image_id, finding_id), 
	CONSTRAINT ck_labels_value CHECK (value IN (1, 0, -1)), 
	CONSTRAINT fk_labels_finding_id_findings FOREIGN KEY(finding_id) REFERENCES findings (id) ON DELETE CASCADE, 
	CONSTRAINT fk_labels_image_id_images FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE
);
INSERT INTO "labels" VALUES(1,1,1);
INSERT INTO "labels" VALUES(2,1,0);
INSERT INTO "labels" VALUES(2,2,-1);
CREATE TABLE predictions (
	evaluation_id INTEGER NOT NULL, 
	image_id INTEGER NOT NULL, 
	finding_id INTEGER NOT NULL, 
	probability FLOAT NOT NULL, 
	label SMALLINT, 
	CONSTRAINT pk_predictions PRIMARY KEY (evaluation_id, image_id, finding_id), 
	CONSTRAINT fk_predictions_evaluation_id_evaluations FOREIGN KEY(evaluation_id) REFERENCES evaluations (id) ON DELETE CASCADE, 
	CONSTRAINT fk_predictions_finding_id_findings FOREIGN KEY(finding_id) REFERENCES findings (id) ON DELETE CASCADE, 
	CONSTRAINT fk_predictions_image_id_images FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE
);
INSERT INTO "predictions" VALUES(1,2,1,0.25,0);
INSERT INTO "predictions" VALUES(2,2,1,0.75,0);
CREATE TABLE runs (
	id INTEGER NOT NULL, 
	dataset_id INTEGER NOT NULL, 
	split_id INTEGER NOT NULL, 
	init_checkpoint_id INTEGER, 
	init_name VARCHAR(64) NOT NULL, 
	init_sha256 VARCHAR(64), 
	arch VARCHAR(128) NOT NULL, 
	image_size INTEGER NOT NULL, 
	findings JSON NOT NULL, 
	config JSON NOT NULL, 
	seed INTEGER NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	epochs_planned INTEGER NOT NULL, 
	epochs_done INTEGER NOT NULL, 
	best_epoch INTEGER, 
	best_val_macro_auc FLOAT, 
	resume_path TEXT, 
	error TEXT, 
	host VARCHAR(256), 
	world_size INTEGER NOT NULL, 
	versions JSON NOT NULL, 
	code_version VARCHAR(128), 
	started_at DATETIME NOT NULL, 
	ended_at DATETIME, owner_host VARCHAR(256), owner_pid INTEGER, owner_token VARCHAR(64), heartbeat_at DATETIME, 
	CONSTRAINT pk_runs PRIMARY KEY (id), 
	CONSTRAINT ck_runs_status CHECK (status IN ('running', 'completed', 'failed', 'interrupted')), 
	CONSTRAINT fk_runs_dataset_id_datasets FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE RESTRICT, 
	CONSTRAINT fk_runs_init_checkpoint_id_checkpoints FOREIGN KEY(init_checkpoint_id) REFERENCES checkpoints (id) ON DELETE RESTRICT, 
	CONSTRAINT fk_runs_split_id_splits FOREIGN KEY(split_id) REFERENCES splits (id) ON DELETE RESTRICT
);
INSERT INTO "runs" VALUES(1,1,1,1,'dinov2','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','vit_small_patch14_dinov2',32,'["Cardiomegaly", "Pleural Effusion"]','{"lr": 1e-05}',0,'running',2,0,NULL,NULL,NULL,NULL,NULL,1,'{}',NULL,'2026-11-29 17:30:20.835187',NULL,NULL,NULL,NULL,NULL);
CREATE TABLE split_assignments (
	split_id INTEGER NOT NULL, 
	image_id INTEGER NOT NULL, 
	part VARCHAR(8) NOT NULL, 
	CONSTRAINT pk_split_assignments PRIMARY KEY (split_id, image_id), 
	CONSTRAINT ck_split_assignments_part CHECK (part IN ('train', 'val', 'test')), 
	CONSTRAINT fk_split_assignments_image_id_images FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE, 
	CONSTRAINT fk_split_assignments_split_id_splits FOREIGN KEY(split_id) REFERENCES splits (id) ON DELETE CASCADE
);
INSERT INTO "split_assignments" VALUES(1,1,'train');
INSERT INTO "split_assignments" VALUES(1,2,'test');
CREATE TABLE splits (
	id INTEGER NOT NULL, 
	dataset_id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	method VARCHAR(32) NOT NULL, 
	seed INTEGER, 
	val_fraction FLOAT, 
	test_fraction FLOAT, 
	"by" VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_splits PRIMARY KEY (id), 
	CONSTRAINT fk_splits_dataset_id_datasets FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE, 
	CONSTRAINT uq_splits_dataset_id_name UNIQUE (dataset_id, name)
);
INSERT INTO "splits" VALUES(1,1,'s0','patient',0,NULL,NULL,'patient','2026-11-29 17:30:20.830163');
CREATE INDEX ix_images_dataset_patient ON images (dataset_id, patient_id);
CREATE INDEX ix_labels_finding ON labels (finding_id);
CREATE INDEX ix_runs_dataset_init ON runs (dataset_id, init_name);
CREATE INDEX ix_split_assignments_image ON split_assignments (image_id);
CREATE INDEX ix_split_assignments_split_part ON split_assignments (split_id, part);
CREATE INDEX ix_checkpoints_init ON checkpoints (init);
CREATE INDEX ix_evaluations_lookup ON evaluations (dataset_id, part, init_name);
CREATE INDEX ix_evaluations_run ON evaluations (run_id);
CREATE INDEX ix_comparisons_dataset ON comparisons (dataset_id);
CREATE INDEX ix_comparisons_evals ON comparisons (evaluation_a_id, evaluation_b_id);
CREATE INDEX ix_predictions_image ON predictions (image_id);
COMMIT;
