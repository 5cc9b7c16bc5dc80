"""initial schema

Revision ID: 0001
Revises: 
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('kobench_meta',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('identity_key', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('source', sa.String(length=512), nullable=False),
    sa.Column('revision', sa.String(length=128), nullable=True),
    sa.Column('weights_hash', sa.String(length=64), nullable=True),
    sa.Column('n_params', sa.BigInteger(), nullable=True),
    sa.Column('dtype', sa.String(length=32), nullable=True),
    sa.Column('quantization', sa.String(length=32), nullable=True),
    sa.Column('base_model_id', sa.Integer(), nullable=True),
    sa.Column('adapter_hash', sa.String(length=64), nullable=True),
    sa.Column('adapter_path', sa.String(length=1024), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['base_model_id'], ['models.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('identity_key')
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('hardware', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('versions', sa.JSON(), nullable=False),
    sa.Column('seeds', sa.JSON(), nullable=False),
    sa.Column('generation_config', sa.JSON(), nullable=False),
    sa.Column('task_versions', sa.JSON(), nullable=False),
    sa.Column('data_hashes', sa.JSON(), nullable=False),
    sa.Column('chat_template', sa.Text(), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('wall_s', sa.Float(), nullable=True),
    sa.Column('peak_mem_mb', sa.Float(), nullable=True),
    sa.Column('prompt_tokens_per_s', sa.Float(), nullable=True),
    sa.Column('gen_tokens_per_s', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('task_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=128), nullable=False),
    sa.Column('task_version', sa.String(length=32), nullable=True),
    sa.Column('data_hash', sa.String(length=64), nullable=True),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('n', sa.Integer(), nullable=True),
    sa.Column('reused_from_id', sa.Integer(), nullable=True),
    sa.Column('wall_s', sa.Float(), nullable=True),
    sa.Column('peak_mem_mb', sa.Float(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=True),
    sa.Column('gen_tokens', sa.Integer(), nullable=True),
    sa.Column('prompt_tokens_per_s', sa.Float(), nullable=True),
    sa.Column('gen_tokens_per_s', sa.Float(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['reused_from_id'], ['task_results.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'task')
    )
    with op.batch_alter_table('task_results', schema=None) as batch_op:
        batch_op.create_index('ix_task_results_fingerprint', ['fingerprint'], unique=False)

    op.create_table('samples',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('task_result_id', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=128), nullable=False),
    sa.Column('doc_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.String(length=255), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('output', sa.Text(), nullable=False),
    sa.Column('target', sa.Text(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.ForeignKeyConstraint(['task_result_id'], ['task_results.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.create_index('ix_samples_result_doc', ['task_result_id', 'doc_id'], unique=False)

    op.create_table('scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('task_result_id', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=128), nullable=False),
    sa.Column('metric', sa.String(length=128), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('stderr', sa.Float(), nullable=True),
    sa.Column('n', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.ForeignKeyConstraint(['task_result_id'], ['task_results.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.create_index('ix_scores_run_task', ['run_id', 'task'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.drop_index('ix_scores_run_task')

    op.drop_table('scores')
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.drop_index('ix_samples_result_doc')

    op.drop_table('samples')
    with op.batch_alter_table('task_results', schema=None) as batch_op:
        batch_op.drop_index('ix_task_results_fingerprint')

    op.drop_table('task_results')
    op.drop_table('runs')
    op.drop_table('models')
    op.drop_table('kobench_meta')
