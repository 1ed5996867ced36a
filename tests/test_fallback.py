"""Without the compiled extension the package still imports, warns once, and
every op falls back to the reference, with the same argument errors."""
import subprocess
import sys
import textwrap


def test_import_without_extension_falls_back_with_one_warning():
    script = textwrap.dedent("""
        import importlib.abc, sys, warnings

        class HideExtension(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "greedyprune._C":
                    raise ImportError("hidden for the test")

        sys.meta_path.insert(0, HideExtension())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import greedyprune.ops as ops
            import greedyprune.ops  # a second import does not warn again
        import torch
        from greedyprune.checks import ArgumentError
        assert not ops.HAS_C
        assert sum("fall back" in str(w.message) for w in caught) == 1, [str(w.message) for w in caught]
        w = torch.tensor([1.0, -2.0, 0.0, 4.0])
        sums, counts = ops.pq_norms(w, [1.0])
        assert abs(float(sums[0, 0].exp()) - 7.0) < 1e-12 and int(counts[0]) == 4
        assert ops.segment_select(w, 1).tolist() == [False, False, False, True]
        asymmetric = torch.tensor([[1.0, 0.5], [0.1, 1.0]])
        for bad, arg in ((lambda: ops.segment_select(w, 5), "k"), (lambda: ops.line_search(asymmetric), "G")):
            try:
                bad()
            except ArgumentError as e:
                assert f"argument '{arg}'" in str(e), str(e)
            else:
                raise AssertionError("a bad argument must raise ArgumentError on the reference fallback")
        try:
            ops.pq_norms(w, [1.0], backend="cpu")
        except RuntimeError as e:
            assert "compiled extension" in str(e)
        else:
            raise AssertionError("backend='cpu' without the extension must fail")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
