include $(sort $(wildcard $(BR2_EXTERNAL_TORPOR_PATH)/package/*/*.mk))
