from icao_mtl import requisites as R


def test_ids_are_the_reference_enum_order():
    assert R.IDS == ("mouth", "rotation", "l_away", "eyes_closed", "close", "hat", "dark_glasses", "frames_heavy",
                     "frame_eyes", "flash_lenses", "veil", "reflection", "light", "sh_face", "sh_head", "blurred",
                     "ink_mark", "skin_tone", "washed_out", "pixelation", "hair_eyes", "background", "red_eyes")
    assert [r.position for r in R.REQUISITES] == list(range(23))


def test_groups_partition_the_requisites_as_in_the_reference_code():
    members = [t for g in R.GROUPS.values() for t in g]
    assert sorted(members) == sorted(R.IDS) and len(members) == 23
    assert [len(g) for g in R.GROUPS.values()] == [7, 2, 8, 6]
    assert R.GROUPS["g1"] == ("mouth", "veil")
    assert R.group_of("hat") == "g3"


def test_names_meanings_codes_and_ficv_numbers():
    assert R.BY_ID["l_away"].name == "L. Away" and R.BY_ID["pixelation"].name == "Pixel."
    assert all(r.meaning for r in R.REQUISITES)
    assert sorted(r.ficv_test for r in R.REQUISITES) == list(range(2, 25))
    assert (R.COMPLIANT, R.NON_COMPLIANT, R.NOT_APPLICABLE) == (1, 0, -1)
    assert set(R.GLASSES_ONLY) == {"frames_heavy", "frame_eyes", "flash_lenses"}


def test_check_ids_names_the_unknown_id():
    import pytest

    with pytest.raises(ValueError, match="'hats'"):
        R.check_ids(["hat", "hats"])
