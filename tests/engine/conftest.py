"""Engine test fixtures."""

import pytest

from pipedecode.engine.block_manager import BlockManager


@pytest.fixture
def pool() -> BlockManager:
    return BlockManager(num_blocks=9, block_size=4)      # 8 usable blocks, 32 tokens
