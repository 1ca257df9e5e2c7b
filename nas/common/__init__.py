"""What several search methods use: the searchable blocks of the backbones and their ImageNet weights
(:mod:`nas.common.blocks`), MAdds measured from the traced graph (:mod:`nas.common.madds`), the
command-line options every method's command shares (:mod:`nas.common.cli`) and the method interface
(:mod:`nas.common.method`)."""
