"""run owner and heartbeat

A run records the process that trains it (host, pid, a token that tells a reused pid
apart) and when that process last said it was alive, so that a killed run shows as
stale and --resume refuses a run that is still training.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 18:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner_host', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('owner_pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('owner_token', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('owner_token')
        batch_op.drop_column('owner_pid')
        batch_op.drop_column('owner_host')
