"""A stage's error line names the root error, not the Ray wrapper around it."""
import pytest

from core.errors import error_line, root_error


class Wrapper(Exception):
    """Stands for ray's RayTaskError: its text names the actor method, ``.cause`` holds the real error."""

    def __init__(self, cause):
        super().__init__("ray::_VLLMActor.generate() (pid=1, ip=192.0.2.2, actor_id=...)\n  File ...")
        self.cause = cause


def test_the_root_error_of_a_ray_wrapper_is_shown():
    e = Wrapper(Wrapper(RuntimeError("CPU Generator does not use offset\nmore detail")))
    assert root_error(e).args[0].startswith("CPU Generator")
    assert error_line(e) == "RuntimeError: CPU Generator does not use offset"


def test_a_plain_error_keeps_its_first_line_and_is_bounded():
    assert error_line(ValueError("bad field\nsecond")) == "ValueError: bad field"
    assert len(error_line(ValueError("x" * 900))) == 500


def test_a_real_ray_task_error_unwraps(tmp_path):
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote
        def boom():
            raise KeyError("missing 'answer'")

        with pytest.raises(Exception) as info:
            ray.get(boom.remote())
        assert error_line(info.value) == "KeyError: \"missing 'answer'\""
    finally:
        if started:
            ray.shutdown()
