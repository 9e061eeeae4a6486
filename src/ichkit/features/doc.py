"""The radiomic feature table: every column's definition and why it carries the physics of a bleed (the
README table is this text), and the fixed column order."""

from __future__ import annotations

from ichkit.features.settings import FeatureSettings

# name -> (definition, why it carries the physics of a bleed). Names with <window> / <i> are patterns.
RADIOMIC_DOC: dict[str, tuple[str, str]] = {
    "brain_area_frac": ("intracranial mask area / image area",
                        "slice level: small near the vertex and skull base, large at the ventricles"),
    "brain_mask_from_hull": ("1 if neither a closing (features.skull_close_px) nor the soft-tissue fill made the "
                             "mask and it came from the skull's convex hull",
                             "flags the rare slices where the mask takes in bone, sinuses and scalp"),
    "brain_mask_closing": ("closing radius (px at 256) that closed the skull ring; 0 where none did",
                           "a wider radius = an open ring: skull base, vertex, sutures, a craniotomy"),
    "brain_mask_soft_fill": ("1 if the skull ring stayed open and the mask is the brain-density tissue (features.csf_hu "
                             "low to clot_hu high) inside the bone's convex hull, cut loose from scalp and sinuses",
                             "flags skull-base / vertex / craniotomy slices, where the mask is less certain"),
    "hu_mean": ("mean HU inside the brain", "global density shift: diffuse blood or oedema"),
    "hu_std": ("HU standard deviation inside the brain", "heterogeneity: clots add a bright mode"),
    "csf_frac": ("fraction of brain pixels in the CSF range (features.csf_hu)",
                 "ventricle / sulcal size; blood displaces or fills CSF spaces"),
    "calcific_frac": ("fraction of brain pixels above blood_hu high (calcification, bone partial volume)",
                      "separates physiological calcification from blood"),
    "blood_hist_<i>": ("fraction of brain pixels in bin i of blood_hu split into hist_bins equal bins",
                       "clotted blood is 50-80 HU, blood diluted by CSF 30-50; the shape of this tail is the bleed"),
    "win_<window>_mean": ("mean of the HU map clipped to the window and scaled to [0, 1], over the head "
                          "(skull and everything inside it)",
                          "what a radiologist sees in that window: brain / subdural / bone (the skull)"),
    "win_<window>_std": ("standard deviation of the same", "contrast inside the window"),
    "win_<window>_skew": ("skewness of the same", "a bright tail (blood) skews right"),
    "win_<window>_kurt": ("excess kurtosis of the same", "a small bright mode raises the tails"),
    "blood_count": ("number of hyperdense components (clot_hu, >= min_blood_px pixels, smoothed HU)",
                    "one focal clot vs scattered sulcal blood (subarachnoid) vs several lesions (multi)"),
    "blood_count_extra_axial": ("components reaching the inner table (within table_contact_px of the brain "
                                "mask's edge)", "epidural / subdural / convexity SAH lie against the skull"),
    "blood_count_intra_axial": ("components that do not reach it", "parenchymal and ventricular blood; one of "
                                "each kind is the commonest multi pattern"),
    "blood_area_frac": ("total hyperdense area / brain area", "bleed volume on this slice"),
    "blood_mean_hu": ("mean HU inside the components (0 if none)",
                      "clotted blood is denser than blood diluted by CSF (SAH, IVH)"),
    "blood_dist_table_mean": ("mean distance of blood pixels to the inner skull table / brain inradius",
                              "extra-axial (epidural, subdural) ~0; intra-axial larger"),
    "blood_dist_centre_mean": ("mean distance of blood pixels to the brain centroid / brain radius",
                               "central (ventricles, deep nuclei) vs peripheral"),
    "blood_peripheral_frac": ("fraction of blood pixels within table_contact_px of the brain mask's edge "
                              "(brain_erode_px + table_contact_px of the inner table)",
                              "blood lying against the skull: epidural / subdural"),
    "blood_deep_frac": ("fraction of blood pixels farther than features.deep_blood_depth x inradius from the "
                        "table",
                        "deep parenchymal or intraventricular blood"),
    "blood_midline_frac": ("fraction of blood pixels within features.midline_width of the brain width of the "
                           "midline axis",
                           "falx / interhemispheric fissure (SAH, falcine subdural) and ventricles"),
    "blood_near_ventricle_frac": ("fraction of blood pixels within features.ventricle_near_px of the ventricles "
                                  "(deep CSF)",
                                  "intraventricular blood fills or borders the ventricles"),
    "rim_hu_p99": ("99th percentile of the median-smoothed HU in the rim (within features.rim_depth x inradius "
                   "of the table)",
                   "threshold-free: thin or CSF-diluted blood along the surface (SAH, thin subdural)"),
    "deep_hu_p99": ("99th percentile of the median-smoothed HU deeper than features.deep_depth x inradius",
                    "threshold-free: diluted blood in the ventricles or a small deep clot"),
    "ventricle_frac": ("deep CSF area (CSF range, beyond features.deep_depth x inradius) / brain area",
                       "ventricles; blood casts them or mass effect compresses them"),
    "largest_area_frac": ("largest component area / brain area", "size of the dominant clot"),
    "largest_eccentricity": ("eccentricity of the largest component's ellipse",
                             "elongated crescents and lenses vs round parenchymal clots"),
    "largest_solidity": ("area / convex hull area of the largest component",
                         "a lens (epidural) is convex (~1); a crescent (subdural) is concave (low)"),
    "largest_concavity": ("(convex hull area - area) of the largest component / brain area",
                          "the brain a crescent wraps around: large for a long subdural, ~0 for a lens"),
    "largest_extent": ("area / bounding box area of the largest component", "fills its box: blob vs arc"),
    "largest_compactness": ("4 pi area / perimeter^2", "round (1) vs thin, branching sulcal blood (~0)"),
    "largest_thickness_ratio": ("max thickness (2 x max inner distance) / major axis length",
                                "a biconvex lens is thick for its length; a crescent is thin"),
    "largest_depth_uniformity": ("mean / max depth from the inner table over the 3-degree sectors the "
                                 "component covers (seen from the brain centroid)",
                                 "a lens bulges in the middle and tapers to both tips (low); a crescent "
                                 "keeps an even depth along the table (high)"),
    "largest_table_contact": ("fraction of the component's boundary pixels within table_contact_px of the "
                              "brain mask's edge",
                              "extra-axial collections lie along the inner table"),
    "largest_arc_span": ("angle the component subtends around the brain centroid / 360 degrees",
                         "subdural crosses sutures (wide arc); epidural is bounded by them (short arc)"),
    "glcm_contrast": ("GLCM contrast, brain window inside the brain (distances 1, 2; 4 angles; mean)",
                      "local density jumps at clot edges"),
    "glcm_dissimilarity": ("GLCM dissimilarity (same GLCM)", "as contrast, linear in the grey difference"),
    "glcm_homogeneity": ("GLCM homogeneity (same GLCM)", "smooth parenchyma vs textured blood"),
    "glcm_energy": ("GLCM energy (same GLCM)", "uniformity of the grey-level pairs"),
    "glcm_correlation": ("GLCM correlation (same GLCM)", "linear structure of the texture"),
}


def radiomic_columns(settings: FeatureSettings) -> list[str]:
    """The radiomic column names in their fixed order, patterns expanded for these settings."""
    names: list[str] = []
    for key in RADIOMIC_DOC:
        if key == "blood_hist_<i>":
            names += [f"blood_hist_{i}" for i in range(settings.hist_bins)]
        elif key.startswith("win_<window>_"):
            stat = key.rsplit("_", 1)[1]
            if stat == "mean":  # expand the four window statistics together, window by window
                names += [f"win_{w}_{s}" for w, _, _ in settings.windows for s in ("mean", "std", "skew", "kurt")]
        else:
            names.append(key)
    return names
